// Paints 256x256 low-res logit maps into canvases: thresholded masks and a diverging heatmap.

import { LOW_RES_PLANE, LOW_RES_SIDE } from "./mask-math.js";

/** Paints a 256x256 thresholded logit map into a canvas (white = mask). */
export function paintLowResMask(canvas, logits) {
  canvas.width = LOW_RES_SIDE;
  canvas.height = LOW_RES_SIDE;
  const context = canvas.getContext("2d");
  const image = context.createImageData(LOW_RES_SIDE, LOW_RES_SIDE);
  const words = new Uint32Array(image.data.buffer);
  for (let i = 0; i < LOW_RES_PLANE; i++) words[i] = logits[i] > 0 ? 0xffffffff : 0xff2a2a2a;
  context.putImageData(image, 0, 0);
}

/**
 * Diverging colours: blue (negative) – white (0) – red (positive), scaled by the largest |logit|.
 * @returns {number[]} [lowest, highest] logit
 */
export function paintHeatmap(canvas, logits) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(LOW_RES_SIDE, LOW_RES_SIDE);
  let low = Infinity;
  let high = -Infinity;
  for (let i = 0; i < LOW_RES_PLANE; i++) {
    if (logits[i] < low) low = logits[i];
    if (logits[i] > high) high = logits[i];
  }
  const scale = Math.max(Math.abs(low), Math.abs(high)) || 1;
  const data = image.data;
  for (let i = 0; i < LOW_RES_PLANE; i++) {
    const t = Math.max(-1, Math.min(1, logits[i] / scale));
    const fade = Math.round(255 * (1 - Math.abs(t)));
    data[i * 4] = t > 0 ? 220 + Math.round(35 * (1 - t)) : fade;
    data[i * 4 + 1] = fade;
    data[i * 4 + 2] = t < 0 ? 220 + Math.round(35 * (1 + t)) : fade;
    data[i * 4 + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return [low, high];
}
