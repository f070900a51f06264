// Runs web/js/mask-math.js on logits from a file, for tests/test_mask_math.py:
//   node mask_math_check.mjs LOGITS.f32 h w H W OUT_PREFIX   (h w: the image in the 1024 frame, or
//   "stretched stretched" for SAM 2's frame)
// writes OUT_PREFIX.fast.u8 (maskFromLowRes), OUT_PREFIX.logits.f32 (upsampleLogits) and prints timings.
import { readFileSync, writeFileSync } from "node:fs";
import { STRETCHED, maskFromLowRes, upsampleLogits } from "../../web/js/mask-math.js";

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
console.log(JSON.stringify({ fastMs, logitsMs }));
