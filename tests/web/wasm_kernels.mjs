// The client's WebAssembly kernels: each web/js/<name>.wat and the <name>-wasm.js module that carries its binary
// (base64), compiled by wabt (a dev dependency of web/).
//   node tests/web/wasm_kernels.mjs           prints {"<name>": true if its module is current, ...}
//   node tests/web/wasm_kernels.mjs --write   regenerates every module from its .wat
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const js = new URL("../../web/js/", import.meta.url);
const KERNELS = { "mask-paint": "MASK_PAINT_WASM", "mask-threshold": "MASK_THRESHOLD_WASM" };

const require = createRequire(new URL("../../web/package.json", import.meta.url));
const wabt = await require("wabt")();

function compiled(name) {
  const wat = wabt.parseWat(`${name}.wat`, readFileSync(new URL(`${name}.wat`, js), "utf8"), { simd: true });
  return Buffer.from(wat.toBinary({}).buffer).toString("base64");
}

const current = {};
for (const [name, constant] of Object.entries(KERNELS)) {
  const target = new URL(`${name}-wasm.js`, js);
  const encoded = compiled(name);
  if (process.argv.includes("--write")) {
    writeFileSync(target, [
      `// Generated from ${name}.wat by \`node tests/web/wasm_kernels.mjs --write\`; do not edit.`,
      `export const ${constant} = "${encoded}";`,
      "",
    ].join("\n"));
  }
  current[name] = readFileSync(target, "utf8").includes(`"${encoded}"`);
}
console.log(JSON.stringify(current));
