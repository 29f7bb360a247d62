#!/usr/bin/env node
// A `solc` binary for Slither (crytic-compile) made of the pinned npm solc-js, so the analysis needs
// no native compiler download: it answers `--version` and `--standard-json` (input on stdin, output
// on stdout), resolving imports like build.js (contracts/, then contracts/node_modules/).
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = path.resolve(__dirname, "..");
const BASES = [process.cwd(), ROOT, path.join(ROOT, "node_modules")];

function findImports(importPath) {
  for (const base of BASES) {
    const candidate = path.resolve(base, importPath);
    if (candidate.startsWith(base) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `import not found: ${importPath}` };
}

const args = process.argv.slice(2);
if (args.includes("--version")) {
  // crytic-compile reads the first x.y.z it sees; solc-js's version is "0.8.37+commit.<hash>.Emscripten.clang".
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
} else if (args.includes("--standard-json")) {
  const input = fs.readFileSync(0, "utf8");
  process.stdout.write(solc.compile(input, { import: findImports }));
} else {
  process.stderr.write("solc.js: only --version and --standard-json are supported\n");
  process.exit(2);
}
