// COCO run-length encoding (as pycocotools): runs over the mask in column-major order, starting with a run
// of zeros; the compressed form is pycocotools' ASCII string (5 bits per character, deltas from i-2).

/** Uncompressed COCO RLE counts of a row-major [H, W] binary mask. */
export function maskToCounts(mask, [H, W]) {
  const counts = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < W; x++) {
    for (let y = 0; y < H; y++) {
      const value = mask[y * W + x] ? 1 : 0;
      if (value !== current) {
        counts.push(run);
        run = 0;
        current = value;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** Row-major [H, W] mask from uncompressed counts. */
export function countsToMask(counts, [H, W]) {
  const mask = new Uint8Array(H * W);
  let index = 0;
  let value = 0;
  for (const run of counts) {
    if (value) {
      for (let i = index; i < index + run; i++) mask[(i % H) * W + Math.floor(i / H)] = 1;
    }
    index += run;
    value ^= 1;
  }
  if (index !== H * W) throw new Error(`The RLE covers ${index} pixels; the mask has ${H * W}.`);
  return mask;
}

/** pycocotools' compressed string of uncompressed counts. */
export function countsToString(counts) {
  let text = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      text += String.fromCharCode(c + 48);
    }
  }
  return text;
}

/** Uncompressed counts of pycocotools' compressed string. */
export function stringToCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= text.length) throw new Error("The RLE string ends in the middle of a number.");
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** COCO segmentation {size: [H, W], counts: "<compressed>"} of a row-major mask. */
export function encodeMask(mask, size) {
  return { size: [size[0], size[1]], counts: countsToString(maskToCounts(mask, size)) };
}

/** Row-major mask of a COCO segmentation (compressed string or uncompressed counts). */
export function decodeSegmentation({ size, counts }) {
  return countsToMask(typeof counts === "string" ? stringToCounts(counts) : counts, size);
}
