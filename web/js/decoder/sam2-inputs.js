// What the decoder worker does differently for SAM 2 (backend.sam2): the image arrives as three tensors
// (image_embed and two high-resolution feature maps, the version-2 wire format), fed-back mask logits are
// clamped as SAM2ImagePredictor returns them, and the single-mask answer falls back to the most stable
// candidate. The frame (points scaled per axis, masks stretched back) is mask-math.js's STRETCHED.

// Dimensions of every image input of the SAM and SAM 2 decoders (the warm-up feeds zeros of these).
const IMAGE_INPUT_DIMS = {
  image_embeddings: [1, 256, 64, 64],
  image_embed: [1, 256, 64, 64],
  high_res_feats_0: [1, 32, 256, 256],
  high_res_feats_1: [1, 64, 128, 128],
};
// SAM2ImagePredictor clamps the low-res logits it returns (and a page feeds back) to this range.
const LOW_RES_LOGIT_LIMIT = 32;
// Meta's build_sam2 settings of MaskDecoder's dynamic multimask (backend/sam2/build_sam.py): token 0's mask is
// kept when the IoU of its masks thresholded at +delta and -delta is at least the threshold.
const STABILITY_DELTA = 0.05;
const STABILITY_THRESHOLD = 0.98;

/** Whether an onnxruntime session is a SAM 2 decoder (it takes the high-resolution features). */
export const isSam2Decoder = (session) => session.inputNames.includes("high_res_feats_0");

/** "sam2-official" (the public SAM 2 interface, outputs masks too) or "sam2-lowres". */
export const sam2Interface = (session) => (session.outputNames.includes("masks") ? "sam2-official" : "sam2-lowres");

/** Zero tensors for the image inputs the session takes (the warm-up decode). */
export function zeroImageFeeds(ort, session) {
  const feeds = {};
  for (const name of session.inputNames) {
    const dims = IMAGE_INPUT_DIMS[name];
    if (dims) feeds[name] = new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b)), dims);
  }
  return feeds;
}

/** A fed-back mask prompt as the predictor would use it: logits clamped to +/-32 (a copy). */
export function clampedMaskInput(maskInput) {
  const out = new Float32Array(maskInput.length);
  for (let i = 0; i < maskInput.length; i++) {
    out[i] = Math.min(LOW_RES_LOGIT_LIMIT, Math.max(-LOW_RES_LOGIT_LIMIT, maskInput[i]));
  }
  return out;
}

/**
 * The unclamped logits of the four mask tokens: the official graph's `masks` ([1, 4, 256, 256]; its
 * low_res_masks are clamped) or the lowres graph's `low_res_masks`. Upsampled as they are, they give the
 * predictor's masks, which it computes before clamping.
 */
export const unclampedLogits = (outputs) => outputs.masks ?? outputs.low_res_masks;

/**
 * predict(multimask_output=False)'s answer in place of token 0: its logits and score when its mask is stable,
 * else those of the candidate (1..3) with the highest predicted IoU (MaskDecoder._dynamic_multimask_via_stability).
 * @param {Float32Array} lowRes the four 256x256 logit maps, changed in place
 * @param {Float32Array} scores the four predicted IoUs, changed in place
 * @param {number} plane values per map
 * @returns {boolean} whether token 0 was replaced
 */
export function applySingleMaskFallback(lowRes, scores, plane) {
  let inner = 0;
  let outer = 0;
  for (let i = 0; i < plane; i++) {
    inner += (lowRes[i] > STABILITY_DELTA) | 0;
    outer += (lowRes[i] > -STABILITY_DELTA) | 0;
  }
  const stability = outer > 0 ? inner / outer : 1;
  if (stability >= STABILITY_THRESHOLD) return false;
  let best = 1;
  for (let c = 2; c < scores.length; c++) if (scores[c] > scores[best]) best = c;
  lowRes.copyWithin(0, best * plane, (best + 1) * plane);
  scores[0] = scores[best];
  return true;
}
