#!/usr/bin/env node
// Compiles src/*.sol with the pinned npm solc (standard-JSON) and writes build/<Name>.json.
// `node build.js --check` recompiles in memory and exits 1 if a committed artifact differs (CI guard).
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SRC = path.join(ROOT, "src");
const OUT = path.join(ROOT, "build");
const NODE_MODULES = path.join(ROOT, "node_modules");
// "cancun": accepted by anvil and by py-evm (eth-tester, the demo fallback); newer targets are not
// guaranteed on the in-process EVM, and pinning keeps the bytecode independent of solc's default.
const EVM_VERSION = "cancun";

function findImports(importPath) {
  for (const base of [ROOT, NODE_MODULES]) {
    const candidate = path.join(base, importPath);
    if (candidate.startsWith(base) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `import not found: ${importPath}` };
}

function compile() {
  const files = fs.readdirSync(SRC).filter((f) => f.endsWith(".sol")).sort();
  const sources = {};
  for (const f of files) sources[`src/${f}`] = { content: fs.readFileSync(path.join(SRC, f), "utf8") };
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: EVM_VERSION,
      // No metadata hash: the same sources give the same bytecode on every machine.
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) {
    process.stderr.write(`build.js: ${errors.length} compile error(s)\n`);
    process.exit(2);
  }
  const compiler = `solc-js ${solc.version()} optimizer=200 evm=${EVM_VERSION}`;
  const artifacts = {};
  for (const f of files) {
    // Only contracts defined in our own sources; interfaces (no bytecode) are skipped.
    for (const [name, c] of Object.entries(output.contracts[`src/${f}`] || {})) {
      if (!c.evm.bytecode.object) continue;
      artifacts[name] = {
        contractName: name,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
        compiler,
      };
    }
  }
  return artifacts;
}

function serialize(artifact) {
  return JSON.stringify(artifact, null, 2) + "\n";
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  if (check) {
    const stale = [];
    for (const [name, a] of Object.entries(artifacts)) {
      const file = path.join(OUT, `${name}.json`);
      if (!fs.existsSync(file) || fs.readFileSync(file, "utf8") !== serialize(a)) stale.push(name);
    }
    const extra = fs.existsSync(OUT)
      ? fs.readdirSync(OUT).filter((f) => f.endsWith(".json") && !(f.slice(0, -5) in artifacts))
      : [];
    if (stale.length || extra.length) {
      if (stale.length) console.error(`build.js --check: artifacts out of date: ${stale.join(", ")}`);
      if (extra.length) console.error(`build.js --check: artifacts without a source: ${extra.join(", ")}`);
      console.error("run `npm run build --prefix contracts` and commit contracts/build/");
      process.exit(1);
    }
    console.log(`build.js --check: ${Object.keys(artifacts).length} artifacts up to date`);
    return;
  }
  fs.mkdirSync(OUT, { recursive: true });
  for (const [name, a] of Object.entries(artifacts)) {
    fs.writeFileSync(path.join(OUT, `${name}.json`), serialize(a));
    console.log(`wrote build/${name}.json (${(a.deployedBytecode.length - 2) / 2} bytes runtime)`);
  }
}

main();
