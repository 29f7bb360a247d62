#!/usr/bin/env node
// Bundles the coverage map (map.js + style.css + Leaflet from node_modules) with the pinned esbuild and
// writes ingest/api/static/{index.html,map.js,map.css}, the files the API serves (committed: a user
// needs no Node). `node build.js --check` builds in memory and exits 1 if a committed file differs.
"use strict";

const fs = require("fs");
const path = require("path");
const esbuild = require("esbuild");

const ROOT = __dirname;
const OUT = path.join(ROOT, "..", "static");

async function bundle() {
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: { map: "map.js" },
    bundle: true,
    minify: true,
    format: "iife",
    target: ["es2020"],
    loader: { ".png": "dataurl", ".svg": "dataurl" },
    legalComments: "eof", // Leaflet's BSD-2-Clause notice stays in the bundle
    charset: "utf8",
    outdir: OUT,
    write: false,
    logLevel: "warning",
  });
  // The page: whitespace between tags dropped (the layout does not depend on it).
  const html = fs.readFileSync(path.join(ROOT, "index.html"), "utf8").replace(/>\s+</g, "><");
  const files = { "index.html": Buffer.from(html.trim() + "\n") };
  for (const f of result.outputFiles) files[path.basename(f.path)] = Buffer.from(f.contents);
  return files;
}

async function main() {
  const check = process.argv.includes("--check");
  const files = await bundle();
  const names = Object.keys(files).sort();
  if (check) {
    const stale = names.filter((n) => {
      const file = path.join(OUT, n);
      return !fs.existsSync(file) || !fs.readFileSync(file).equals(files[n]);
    });
    if (stale.length) {
      process.stderr.write(
        `ingest/api/static is stale (${stale.join(", ")}): run \`node ingest/api/web/build.js\` and commit\n`,
      );
      process.exit(1);
    }
    process.stdout.write(`ingest/api/static up to date (${names.join(", ")})\n`);
    return;
  }
  fs.mkdirSync(OUT, { recursive: true });
  for (const n of names) fs.writeFileSync(path.join(OUT, n), files[n]);
  process.stdout.write(`wrote ${names.map((n) => `ingest/api/static/${n} (${files[n].length} B)`).join(", ")}\n`);
}

main().catch((err) => {
  process.stderr.write(`build.js: ${err.stack || err}\n`);
  process.exit(2);
});
