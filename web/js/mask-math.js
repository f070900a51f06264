// Geometry shared by the page and the decoder worker: the resize-longest-side frame of the model and
// the upsampling of 256x256 low-res logits to image pixels, computed exactly like Meta's
// Sam.postprocess_masks (F.interpolate bilinear, align_corners=False, twice). SAM 2 stretches the image over
// the whole square instead (STRETCHED): points scale per axis, and logits go to the image in one bilinear
// resize, as SAM2Transforms.postprocess_masks.

import { MASK_THRESHOLD_WASM } from "./mask-threshold-wasm.js";
import { reserveBytes, wasmKernel } from "./wasm-kernel.js";

export const MODEL_SIDE = 1024;
export const LOW_RES_SIDE = 256;
export const LOW_RES_PLANE = LOW_RES_SIDE * LOW_RES_SIDE;

/** The c-th 256x256 logit map of a stack of them (a view, not a copy). */
export const lowResPlane = (stack, c) => stack.subarray(c * LOW_RES_PLANE, (c + 1) * LOW_RES_PLANE);

/** [newH, newW] of an image of [h, w] resized so its longest side is `side` (Meta's rounding). */
export function resizedSize(h, w, side = MODEL_SIDE) {
  const scale = side / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

/** The `inputSize` of an image that SAM 2 stretched over the whole 1024 x 1024 frame (no padding). */
export const STRETCHED = "stretched";

/**
 * Point [x, y] in image pixels of an [h, w] image mapped into the model's 1024 frame: resized longest side
 * (SAM 1), or with `inputSize` STRETCHED each axis scaled on its own (SAM 2: x * 1024 / w, y * 1024 / h).
 */
export function toModelFrame([x, y], [h, w], inputSize = null) {
  if (inputSize === STRETCHED) return [x * (MODEL_SIDE / w), y * (MODEL_SIDE / h)];
  const [newH, newW] = resizedSize(h, w);
  return [x * (newW / w), y * (newH / h)];
}

const tableCache = new Map();

/**
 * Source indices and weights of a 1-D bilinear resize with half-pixel centres (align_corners=False):
 * out[i] = w0[i] * in[i0[i]] + w1[i] * in[i1[i]].
 */
function resizeTable(inSize, outSize) {
  const key = `${inSize}:${outSize}`;
  let table = tableCache.get(key);
  if (table) return table;
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w0 = new Float32Array(outSize);
  const w1 = new Float32Array(outSize);
  const scale = Math.fround(inSize / outSize);
  for (let i = 0; i < outSize; i++) {
    const src = Math.max(Math.fround(scale * (i + 0.5) - 0.5), 0);
    const lo = Math.min(Math.floor(src), inSize - 1);
    const frac = src - lo;
    i0[i] = lo;
    i1[i] = lo < inSize - 1 ? lo + 1 : lo;
    w1[i] = frac;
    w0[i] = 1 - frac;
  }
  table = { i0, i1, w0, w1 };
  if (tableCache.size > 32) tableCache.clear();
  tableCache.set(key, table);
  return table;
}

/**
 * The two resizes of one axis (256 -> 1024, crop to `crop`, then -> `outSize`) folded into one filter of
 * `taps` (2 or 3) taps: out[i] = sum_k weight[taps*i+k] * low[index[taps*i+k]]. Both resizes are linear,
 * so folding them changes nothing but float rounding. Taps on the same source are merged and zero weights
 * dropped. An output reads two neighbouring pixels of the 1024 frame, each two neighbouring sources, so three
 * sources at most; two when the second resize keeps the size (an image whose longest side is 1024), which
 * saves a third of the work. (Four taps, as before 2026-12-06, cost 2x in Node: 534 x 800, 4.3 against 2.1 ms.)
 */
function foldedTable(crop, outSize) {
  const key = `folded:${crop}:${outSize}`;
  let table = tableCache.get(key);
  if (table) return table;
  const upscale = resizeTable(LOW_RES_SIDE, MODEL_SIDE);
  const second = resizeTable(crop, outSize);
  const merged = [];
  let taps = 2;
  for (let i = 0; i < outSize; i++) {
    const sources = new Map();
    for (const [mid, w] of [[second.i0[i], second.w0[i]], [second.i1[i], second.w1[i]]]) {
      for (const [source, v] of [[upscale.i0[mid], upscale.w0[mid]], [upscale.i1[mid], upscale.w1[mid]]]) {
        const product = Math.fround(w * v);
        if (product !== 0) sources.set(source, Math.fround((sources.get(source) || 0) + product));
      }
    }
    if (sources.size > 2) taps = 3;
    merged.push([...sources]);
  }
  const index = new Int32Array(outSize * taps);
  const weight = new Float32Array(outSize * taps);
  merged.forEach((sources, i) => {
    for (let k = 0; k < taps; k++) {
      // Unused taps repeat the first source with weight 0.
      index[taps * i + k] = (sources[k] || sources[0])[0];
      weight[taps * i + k] = sources[k] ? sources[k][1] : 0;
    }
  });
  // The range of source indices the filter reads.
  let first = LOW_RES_SIDE - 1, last = 0;
  for (const source of index) {
    if (source < first) first = source;
    if (source > last) last = source;
  }
  table = { taps, index, weight, first, last };
  tableCache.set(key, table);
  return table;
}

/**
 * The image tokens, [rows, cols] of the decoder's 64 x 64 grid from the top left, whose low-res logits (4 x 4
 * each) the upsampling to an image of this inputSize can read, whatever the output size: every source of the
 * 256 -> 1024 resize of the last row and column inside the crop. The lowres graph upscales only those
 * (its valid_tokens input); SAM 2's stretched frame reads them all.
 */
export function tokenExtent(inputSize) {
  const side = LOW_RES_SIDE / 4;
  if (inputSize === STRETCHED) return [side, side];
  const { i1 } = resizeTable(LOW_RES_SIDE, MODEL_SIDE);
  return inputSize.map((crop) => Math.min(side, Math.floor(i1[crop - 1] / 4) + 1));
}

/**
 * Low-res logits of k candidates computed for the top-left [rows, cols] tokens only ([k, 4 rows, 4 cols])
 * laid into k 256 x 256 planes, with `fill` where nothing was computed (outside the image: the upsampling
 * never reads it).
 */
export function padLowRes(cropped, k, [rows, cols], fill = 0) {
  const h = 4 * rows, w = 4 * cols;
  const out = new Float32Array(k * LOW_RES_PLANE);
  if (fill !== 0) out.fill(fill);
  for (let c = 0; c < k; c++) {
    for (let y = 0; y < h; y++) {
      const from = (c * h + y) * w;
      out.set(cropped.subarray(from, from + w), c * LOW_RES_PLANE + y * LOW_RES_SIDE);
    }
  }
  return out;
}

/** A single bilinear resize 256 -> outSize (a STRETCHED image), in foldedTable's layout. */
function directTable(outSize) {
  const key = `direct:${outSize}`;
  let table = tableCache.get(key);
  if (table) return table;
  const { i0, i1, w0, w1 } = resizeTable(LOW_RES_SIDE, outSize);
  const index = new Int32Array(outSize * 2);
  const weight = new Float32Array(outSize * 2);
  for (let i = 0; i < outSize; i++) {
    index[2 * i] = i0[i];
    index[2 * i + 1] = i1[i];
    weight[2 * i] = w0[i];
    weight[2 * i + 1] = w1[i];
  }
  table = { taps: 2, index, weight, first: 0, last: LOW_RES_SIDE - 1 };
  tableCache.set(key, table);
  return table;
}

/** The [vertical, horizontal] filters from low-res logits to an [H, W] image with the given inputSize. */
function filters(inputSize, [H, W]) {
  if (inputSize === STRETCHED) return [directTable(H), directTable(W)];
  return [foldedTable(inputSize[0], H), foldedTable(inputSize[1], W)];
}

/** Horizontal pass of low-res row r into rows[r * W, (r + 1) * W) (W: the filter's output size). */
function foldRow(lowRes, { taps, index, weight }, r, rows) {
  const W = index.length / taps;
  const base = r * LOW_RES_SIDE;
  const o = r * W;
  if (taps === 2) {
    for (let j = 0, k = 0; j < W; j++, k += 2) {
      rows[o + j] = weight[k] * lowRes[base + index[k]] + weight[k + 1] * lowRes[base + index[k + 1]];
    }
  } else {
    for (let j = 0, k = 0; j < W; j++, k += 3) {
      rows[o + j] = weight[k] * lowRes[base + index[k]] + weight[k + 1] * lowRes[base + index[k + 1]] +
        weight[k + 2] * lowRes[base + index[k + 2]];
    }
  }
}

/**
 * Horizontal pass of the low-res rows the vertical filter reads (the others, outside the image's part of the
 * 1024 frame, are left as they are) into rows: [256, W] float32, a new zeroed array unless given.
 */
function foldRows(lowRes, horizontal, { first, last },
  rows = new Float32Array(LOW_RES_SIDE * (horizontal.index.length / horizontal.taps))) {
  let r = first;
  // Four rows per load of a column's taps (Node 20, 192 rows to 1024 columns: 0.39 against 0.57 ms).
  for (; r + 3 <= last; r += 4) (horizontal.taps === 2 ? foldFourRows2 : foldFourRows3)(lowRes, horizontal, r, rows);
  for (; r <= last; r++) foldRow(lowRes, horizontal, r, rows);
  return rows;
}

/** foldRow of low-res rows r .. r + 3 with a 2-tap filter, each output with foldRow's operations. */
function foldFourRows2(lowRes, { index, weight }, r, rows) {
  const W = index.length / 2;
  const b0 = r * LOW_RES_SIDE, b1 = b0 + LOW_RES_SIDE, b2 = b1 + LOW_RES_SIDE, b3 = b2 + LOW_RES_SIDE;
  const o0 = r * W, o1 = o0 + W, o2 = o1 + W, o3 = o2 + W;
  for (let j = 0, k = 0; j < W; j++, k += 2) {
    const p = index[k], q = index[k + 1], wp = weight[k], wq = weight[k + 1];
    rows[o0 + j] = wp * lowRes[b0 + p] + wq * lowRes[b0 + q];
    rows[o1 + j] = wp * lowRes[b1 + p] + wq * lowRes[b1 + q];
    rows[o2 + j] = wp * lowRes[b2 + p] + wq * lowRes[b2 + q];
    rows[o3 + j] = wp * lowRes[b3 + p] + wq * lowRes[b3 + q];
  }
}

/** foldRow of low-res rows r .. r + 3 with a 3-tap filter, each output with foldRow's operations. */
function foldFourRows3(lowRes, { index, weight }, r, rows) {
  const W = index.length / 3;
  const b0 = r * LOW_RES_SIDE, b1 = b0 + LOW_RES_SIDE, b2 = b1 + LOW_RES_SIDE, b3 = b2 + LOW_RES_SIDE;
  const o0 = r * W, o1 = o0 + W, o2 = o1 + W, o3 = o2 + W;
  for (let j = 0, k = 0; j < W; j++, k += 3) {
    const p = index[k], q = index[k + 1], t = index[k + 2], wp = weight[k], wq = weight[k + 1], wt = weight[k + 2];
    rows[o0 + j] = wp * lowRes[b0 + p] + wq * lowRes[b0 + q] + wt * lowRes[b0 + t];
    rows[o1 + j] = wp * lowRes[b1 + p] + wq * lowRes[b1 + q] + wt * lowRes[b1 + t];
    rows[o2 + j] = wp * lowRes[b2 + p] + wq * lowRes[b2 + q] + wt * lowRes[b2 + t];
    rows[o3 + j] = wp * lowRes[b3 + p] + wq * lowRes[b3 + q] + wt * lowRes[b3 + t];
  }
}

/**
 * Upsamples one low-res logit map to an image.
 * @param {Float32Array} lowRes 256*256 logits (row-major)
 * @param {number[]|string} inputSize [h, w] of the image inside the 1024 frame (resizedSize of the encoded
 *   image), or STRETCHED
 * @param {number[]} outSize [H, W] of the wanted mask
 * @returns {Float32Array} H*W logits, row-major
 */
export function upsampleLogits(lowRes, inputSize, [H, W]) {
  const [vertical, horizontal] = filters(inputSize, [H, W]);
  const { taps, index, weight } = vertical;
  const rows = foldRows(lowRes, horizontal, vertical);
  const out = new Float32Array(H * W);
  for (let i = 0, k = 0; i < H; i++, k += taps) {
    const o = i * W;
    const a = index[k] * W, b = index[k + 1] * W;
    const wa = weight[k], wb = weight[k + 1];
    if (taps === 2) {
      for (let j = 0; j < W; j++) out[o + j] = wa * rows[a + j] + wb * rows[b + j];
    } else {
      const c = index[k + 2] * W, wc = weight[k + 2];
      for (let j = 0; j < W; j++) out[o + j] = wa * rows[a + j] + wb * rows[b + j] + wc * rows[c + j];
    }
  }
  return out;
}

/**
 * Output row i's columns [from, to) of upsampleLogits(...) > 0 into row, from the horizontal pass's rows:
 * the same operations in the same order, so the same rounding.
 */
function thresholdSpan(rows, { taps, index, weight }, i, W, from, to, row) {
  const k = taps * i;
  const a = index[k] * W, b = index[k + 1] * W;
  const wa = weight[k], wb = weight[k + 1];
  if (taps === 2) {
    for (let j = from; j < to; j++) row[j] = (wa * rows[a + j] + wb * rows[b + j] > 0) | 0;
  } else {
    const c = index[k + 2] * W, wc = weight[k + 2];
    for (let j = from; j < to; j++) row[j] = (wa * rows[a + j] + wb * rows[b + j] + wc * rows[c + j] > 0) | 0;
  }
}

/**
 * upsampleLogits(...) > 0 of every output row into out, from the horizontal pass's rows, with the same operations
 * (so the same rounding) as thresholdSpan. Upsampling, consecutive output rows read the same source rows (4 in a
 * row at 1024 -> 1024, more for larger outputs); the 2-tap filter then does four such rows per load of their two
 * sources, which halves the pass (Node 20, 768 x 1024 speckled logits: 0.83 against 1.7 ms).
 */
function thresholdRows(rows, vertical, W, out) {
  const { taps, index, weight } = vertical;
  const H = index.length / taps;
  let i = 0;
  while (i < H) {
    let n = 1;
    while (i + n < H && sameSources(vertical, i, i + n)) n++;
    if (taps === 2) {
      for (; n >= 4; n -= 4, i += 4) thresholdFourRows2(rows, index[2 * i] * W, index[2 * i + 1] * W, weight, 2 * i, W, out, i * W);
    }
    for (; n > 0; n--, i++) thresholdSpan(rows, vertical, i, W, 0, W, out.subarray(i * W, (i + 1) * W));
  }
}

/** Output rows i .. i + 3 (weights from weight[k]) of a 2-tap filter whose sources are rows a and b for all four. */
function thresholdFourRows2(rows, a, b, weight, k, W, out, o) {
  const wa0 = weight[k], wb0 = weight[k + 1], wa1 = weight[k + 2], wb1 = weight[k + 3];
  const wa2 = weight[k + 4], wb2 = weight[k + 5], wa3 = weight[k + 6], wb3 = weight[k + 7];
  const o1 = o + W, o2 = o + 2 * W, o3 = o + 3 * W;
  for (let j = 0; j < W; j++) {
    const x = rows[a + j], y = rows[b + j];
    out[o + j] = (wa0 * x + wb0 * y > 0) | 0;
    out[o1 + j] = (wa1 * x + wb1 * y > 0) | 0;
    out[o2 + j] = (wa2 * x + wb2 * y > 0) | 0;
    out[o3 + j] = (wa3 * x + wb3 * y > 0) | 0;
  }
}

let thresholdKernel; // mask-threshold.wat's exports once asked for (null where WebAssembly cannot run)
// A kernel whose memory grew past this (a mask at an original photo's size, for an export) is dropped after its
// call, so the memory goes with it instead of staying for good; a mask of the encoded image (at most 1024 x 1024)
// needs about 2 MiB.
const KERNEL_KEPT_BYTES = 4 * 1024 * 1024;

/**
 * thresholdRows(foldRows(...)) with the vertical pass in mask-threshold.wat, four pixels a step in float64 with
 * the same operations, so the same bits (800 x 534 speckled logits, Node 20: 1.1 against 2.0 ms; docs/benchmarks.md,
 * "The overlay's paint and the client's mask in WebAssembly"). The horizontal pass writes its rows straight into
 * the kernel's memory.
 * @returns {boolean} false where the kernel cannot run (the caller then thresholds in JavaScript)
 */
function thresholdInKernel(lowRes, vertical, horizontal, W, out) {
  thresholdKernel ??= wasmKernel(MASK_THRESHOLD_WASM);
  if (!thresholdKernel) return false;
  const { taps, index, weight } = vertical;
  const H = index.length / taps;
  const rowsBytes = LOW_RES_SIDE * W * 4, tableBytes = index.length * 4;
  const buffer = reserveBytes(thresholdKernel.memory, rowsBytes + 2 * tableBytes + H * W);
  foldRows(lowRes, horizontal, vertical, new Float32Array(buffer, 0, LOW_RES_SIDE * W));
  new Int32Array(buffer, rowsBytes, index.length).set(index);
  new Float32Array(buffer, rowsBytes + tableBytes, weight.length).set(weight);
  const at = rowsBytes + 2 * tableBytes;
  thresholdKernel.thresholdRows(0, rowsBytes, rowsBytes + tableBytes, taps, H, W, at);
  out.set(new Uint8Array(buffer, at, H * W));
  if (buffer.byteLength > KERNEL_KEPT_BYTES) thresholdKernel = undefined;
  return true;
}

/**
 * 1 where logits > threshold, else 0. Thresholds here are written `(x > level) | 0`, which JavaScript
 * engines compile without a branch: on a mask's noisy edges `x > level ? 1 : 0` mispredicts so often that
 * it cost 10x more (Node 20, 768 x 1024 random logits: 12-19 ms against 1-1.7 ms).
 */
export function threshold(logits, level = 0) {
  const mask = new Uint8Array(logits.length);
  for (let i = 0; i < logits.length; i++) mask[i] = (logits[i] > level) | 0;
  return mask;
}

/**
 * Binary mask of an image from low-res logits (the lowres decoder interface), thresholded at 0: exactly
 * upsampleLogits(...) > 0, mostly without computing it. Every filter weight is >= 0 and a pixel's weights
 * sum to 1, so a pixel whose sources are all > 0 is inside and one whose sources are all <= 0 is outside;
 * only pixels that read both kinds (a mask's edge) need the arithmetic, and the rest are filled in runs
 * (768 x 1024, Node 20: 1.9 against 2.4 ms when 2 % of neighbouring sources differ in sign). Speckled logits
 * (random weights) are mostly edge, and there the run bookkeeping costs more than it saves (Node 20, 768 x 1024:
 * 4.2 ms against 1.6 when 17 % of neighbouring sources differ in sign; they break even near 4 %): when over 1/24 do,
 * or the mask is small beside the sources it reads, the whole upsampling is thresholded instead.
 */
export function maskFromLowRes(lowRes, inputSize, [H, W]) {
  const [vertical, horizontal] = filters(inputSize, [H, W]);
  const out = new Uint8Array(H * W);
  const { kind, mixed } = sourceKinds(lowRes, vertical, horizontal);
  const sources = (vertical.last - vertical.first + 1) * (horizontal.last - horizontal.first + 1);
  if (24 * mixed > sources || H * W < 4 * sources) {
    if (!thresholdInKernel(lowRes, vertical, horizontal, W, out)) thresholdRows(foldRows(lowRes, horizontal, vertical), vertical, W, out);
    return out;
  }
  const spans = columnSpans(horizontal);
  const rowKind = new Uint8Array(LOW_RES_SIDE);
  for (let i = 0; i < H; i++) {
    // Rows with the same sources (3 or 4 in a row when upsampling) share their kinds.
    if (i === 0 || !sameSources(vertical, i - 1, i)) combineKinds(kind, vertical, i, rowKind, horizontal);
    fillRow(lowRes, vertical, horizontal, spans, rowKind, i, out.subarray(i * W, (i + 1) * W));
  }
  return out;
}

// A source's kind: INSIDE (> TINY, so no product with its weight rounds to 0), OUTSIDE (<= 0) or neither (0).
// ANDing the kinds of a pixel's sources keeps INSIDE or OUTSIDE only when all of them agree.
const INSIDE = 1, OUTSIDE = 2, TINY = 1e-30;

/** The kind of every low-res logit the filters read, and how many are neither INSIDE nor OUTSIDE of their own. */
function sourceKinds(lowRes, vertical, horizontal) {
  const kind = new Uint8Array(LOW_RES_PLANE);
  let mixed = 0;
  for (let r = vertical.first; r <= vertical.last; r++) {
    for (let c = horizontal.first, p = r * LOW_RES_SIDE + c; c <= horizontal.last; c++, p++) {
      const v = lowRes[p];
      kind[p] = v > TINY ? INSIDE : v <= 0 ? OUTSIDE : 0;
    }
  }
  // A logit is "mixed" when its right neighbour has another kind: that is where edges are.
  for (let r = vertical.first; r <= vertical.last; r++) {
    for (let c = horizontal.first, p = r * LOW_RES_SIDE + c; c < horizontal.last; c++, p++) mixed += (kind[p] & kind[p + 1]) === 0 ? 1 : 0;
  }
  return { kind, mixed };
}

function sameSources({ taps, index }, i, j) {
  for (let t = 0; t < taps; t++) if (index[taps * i + t] !== index[taps * j + t]) return false;
  return true;
}

/** rowKind[c] = the kind shared by low-res column c of every source row of output row i (0 if they differ). */
function combineKinds(kind, { taps, index }, i, rowKind, { first, last }) {
  const a = index[taps * i] * LOW_RES_SIDE;
  for (let c = first; c <= last; c++) rowKind[c] = kind[a + c];
  for (let t = 1; t < taps; t++) {
    const b = index[taps * i + t] * LOW_RES_SIDE;
    for (let c = first; c <= last; c++) rowKind[c] &= kind[b + c];
  }
}

/**
 * For the horizontal filter: start[c] = the first output column whose sources are all >= c, end[c] = the
 * last one whose sources are all <= c (the sources grow with the column), so a run [c0, c1] of low-res
 * columns of one kind decides output columns start[c0] .. end[c1].
 */
function columnSpans(horizontal) {
  if (horizontal.spans) return horizontal.spans;
  const { taps, index } = horizontal;
  const W = index.length / taps;
  const start = new Int32Array(LOW_RES_SIDE).fill(W);
  const end = new Int32Array(LOW_RES_SIDE).fill(-1);
  for (let j = W - 1; j >= 0; j--) {
    let lo = index[taps * j];
    for (let t = 1; t < taps; t++) lo = Math.min(lo, index[taps * j + t]);
    for (let c = 0; c <= lo; c++) start[c] = j;
  }
  for (let j = 0; j < W; j++) {
    let hi = index[taps * j];
    for (let t = 1; t < taps; t++) hi = Math.max(hi, index[taps * j + t]);
    for (let c = hi; c < LOW_RES_SIDE; c++) end[c] = j;
  }
  horizontal.spans = { start, end };
  return horizontal.spans;
}

/** Output row i: runs of one kind filled, the columns between them thresholded. */
function fillRow(lowRes, vertical, horizontal, { start, end }, rowKind, i, row) {
  const { first, last } = horizontal;
  let done = 0; // output columns before this are decided
  for (let c = first; c <= last; ) {
    const k = rowKind[c];
    let c1 = c;
    while (c1 < last && rowKind[c1 + 1] === k) c1++;
    if (k !== 0) {
      const from = start[c], to = end[c1];
      if (from <= to) {
        if (done < from) edgePixels(lowRes, vertical, horizontal, i, done, from, row);
        if (k === INSIDE) row.fill(1, from, to + 1);
        done = to + 1;
      }
    }
    c = c1 + 1;
  }
  if (done < row.length) edgePixels(lowRes, vertical, horizontal, i, done, row.length, row);
}

/**
 * Output row i's columns [from, to) of upsampleLogits(...) > 0, with the same operations in the same order
 * (so the same rounding): each source row's horizontal value rounded to float32, then the vertical mix.
 */
function edgePixels(lowRes, vertical, { taps, index, weight }, i, from, to, row) {
  const v = vertical.taps * i;
  for (let j = from; j < to; j++) {
    const k = taps * j;
    let value = 0;
    for (let t = 0; t < vertical.taps; t++) {
      const base = vertical.index[v + t] * LOW_RES_SIDE;
      const h = taps === 2
        ? Math.fround(weight[k] * lowRes[base + index[k]] + weight[k + 1] * lowRes[base + index[k + 1]])
        : Math.fround(weight[k] * lowRes[base + index[k]] + weight[k + 1] * lowRes[base + index[k + 1]] +
          weight[k + 2] * lowRes[base + index[k + 2]]);
      value = t === 0 ? vertical.weight[v] * h : value + vertical.weight[v + t] * h;
    }
    row[j] = (value > 0) | 0;
  }
}

/** Nearest-neighbour resize of a binary mask (for masks that have no logits, e.g. everything mode). */
export function resizeMaskNearest(mask, [h, w], [H, W]) {
  if (h === H && w === W) return mask;
  const out = new Uint8Array(H * W);
  const xs = new Int32Array(W);
  for (let x = 0; x < W; x++) xs[x] = Math.min(w - 1, Math.floor((x + 0.5) * (w / W)));
  for (let y = 0; y < H; y++) {
    const sy = Math.min(h - 1, Math.floor((y + 0.5) * (h / H))) * w;
    const o = y * W;
    for (let x = 0; x < W; x++) out[o + x] = mask[sy + xs[x]];
  }
  return out;
}

/** Area and XYWH bounding box of a binary mask; bbox is null for an empty mask. */
export function maskStats(mask, [H, W]) {
  let area = 0;
  let x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (let y = 0; y < H; y++) {
    const o = y * W;
    for (let x = 0; x < W; x++) {
      if (!mask[o + x]) continue;
      area++;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
  }
  return { area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : null };
}

/** Fraction of pixels where two equal-size masks agree, and their IoU. */
export function compareMasks(a, b) {
  let same = 0, inter = 0, union = 0;
  for (let i = 0; i < a.length; i++) {
    const p = a[i] ? 1 : 0, q = b[i] ? 1 : 0;
    if (p === q) same++;
    inter += p & q;
    union += p | q;
  }
  return { agreement: same / a.length, iou: union ? inter / union : 1 };
}
