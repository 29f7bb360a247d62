#!/usr/bin/env node
// Writes tests/fixtures/merkle_vectors.json: roots and proofs computed by @openzeppelin/merkle-tree for
// fixed inputs, so the Python tree (ingest/core/merkle.py) is checked against the reference library.
// Usage: node contracts/scripts/merkle_vectors.mjs   (deterministic: re-running gives the same file)
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outFile = path.resolve(here, "..", "..", "tests", "fixtures", "merkle_vectors.json");

// Deterministic pseudo-random addresses (64-bit LCG in BigInt): no key material, no extra dependency.
let state = 0x2545f4914f6cdd1dn;
function next64() {
  state = (state * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
  return state;
}
function address() {
  let hex = "";
  while (hex.length < 40) hex += next64().toString(16).padStart(16, "0");
  return "0x" + hex.slice(0, 40);
}

const SPECIAL = [0n, 1n, 2n ** 200n, 10n ** 18n, 2n ** 256n - 1n];
function amounts(n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push(i < SPECIAL.length ? SPECIAL[i] : (next64() % 10n ** 24n) + BigInt(i));
  }
  return out;
}

function makeCase(name, n) {
  const values = amounts(n).map((a) => [address(), a.toString()]);
  const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
  const proofs = [];
  for (const [i, v] of tree.entries()) {
    proofs.push({ address: v[0], amount: v[1], proof: tree.getProof(i) });
  }
  return { name, leafEncoding: ["address", "uint256"], entries: values, root: tree.root, proofs };
}

const cases = [makeCase("one", 1), makeCase("two", 2), makeCase("five", 5), makeCase("thirty-three", 33)];
const doc = { generator: "contracts/scripts/merkle_vectors.mjs", library: "@openzeppelin/merkle-tree@1.0.8", cases };
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, JSON.stringify(doc, null, 2) + "\n");
console.log(`wrote ${path.relative(process.cwd(), outFile)} (${cases.length} cases)`);
