// Runs web/js/mask-math.js on logits from a file, for tests/test_mask_math.py:
//   node mask_math_check.mjs LOGITS.f32 h w H W OUT_PREFIX   (h w: the image in the 1024 frame, or
//   "stretched stretched" for SAM 2's frame)
// writes OUT_PREFIX.fast.u8 (maskFromLowRes), OUT_PREFIX.logits.f32 (upsampleLogits), OUT_PREFIX.cropped.f32
// (upsampleLogits of only the tokenExtent corner of the logits, laid back by padLowRes with NaN elsewhere) and
// prints timings, the extent and whether maskFromLowRes's WebAssembly kernel (mask-threshold.wat) runs here.
import { readFileSync, writeFileSync } from "node:fs";
import { STRETCHED, maskFromLowRes, padLowRes, tokenExtent, upsampleLogits } from "../../web/js/mask-math.js";
import { MASK_THRESHOLD_WASM } from "../../web/js/mask-threshold-wasm.js";
import { wasmKernel } from "../../web/js/wasm-kernel.js";

const [file, h, w, H, W, prefix] = process.argv.slice(2);
const bytes = readFileSync(file);
const lowRes = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const inputSize = h === STRETCHED ? STRETCHED : [Number(h), Number(w)];
const outSize = [Number(H), Number(W)];
const time = (f) => {
  const times = [];
  let value;
  for (let i = 0; i < 7; i++) {
    const started = performance.now();
    value = f();
    times.push(performance.now() - started);
  }
  return [value, times.sort((a, b) => a - b)[3]];
};
const [fast, fastMs] = time(() => maskFromLowRes(lowRes, inputSize, outSize));
const [logits, logitsMs] = time(() => upsampleLogits(lowRes, inputSize, outSize));
writeFileSync(`${prefix}.fast.u8`, fast);
writeFileSync(`${prefix}.logits.f32`, new Uint8Array(logits.buffer));
// What a cropped lowres run gives the worker: the corner's [4 rows, 4 cols] logits only.
const extent = tokenExtent(inputSize);
const [h4, w4] = extent.map((n) => 4 * n);
const corner = new Float32Array(h4 * w4);
for (let y = 0; y < h4; y++) corner.set(lowRes.subarray(y * 256, y * 256 + w4), y * w4);
const cropped = upsampleLogits(padLowRes(corner, 1, extent, NaN), inputSize, outSize);
writeFileSync(`${prefix}.cropped.f32`, new Uint8Array(cropped.buffer));
console.log(JSON.stringify({ fastMs, logitsMs, extent, kernel: wasmKernel(MASK_THRESHOLD_WASM) !== null }));
