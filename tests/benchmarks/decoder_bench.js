// Times the official-interface decoder against the lowres variant in one page, interleaved (ABBA order),
// with onnxruntime-web WASM. A "decode" is prompt -> binary mask at image size, as the client needs it:
// official: session.run + threshold of the chosen full-size mask (mask-math.js threshold); lowres: session.run + upsample and
// threshold of the chosen low-res logits with the client's own mask-math.js.
import * as ort from "/ort/ort.wasm.min.mjs";
import { STRETCHED, maskFromLowRes, padLowRes, resizedSize, compareMasks, threshold, tokenExtent } from "/web/js/mask-math.js";
import { applySingleMaskFallback, unclampedLogits } from "/web/js/decoder/sam2-inputs.js";
import { decoderSessionOptions } from "/web/js/decoder/session-options.js";

const params = await (await fetch("/bench/params.json")).json();
const status = (text) => { document.getElementById("status").textContent = text; };

ort.env.wasm.numThreads = params.threads;
ort.env.wasm.wasmPaths = "/ort/";
ort.env.logLevel = "error";

const [H, W] = params.image_hw;
const inputSize = resizedSize(H, W);
// The lowres graphs of exporter 6 upscale only the tokens they are given (valid_tokens): a single prompt's
// decode gets the tokens under the image, as the worker's hovers; batched boxes all of them, as decodeMany.
const extent = tokenExtent(inputSize);
const tokens = ([rows, cols]) => new ort.Tensor("int64", BigInt64Array.of(BigInt(rows), BigInt(cols)), [2]);
const embedding = new Float32Array(await (await fetch("/bench/embedding.f32")).arrayBuffer());
// SAM 2 decoders (interfaces sam2-*) take three image tensors, stored one after the other.
const SAM2_DIMS = { image_embed: [1, 256, 64, 64], high_res_feats_0: [1, 32, 256, 256], high_res_feats_1: [1, 64, 128, 128] };
const sam2Features = {};
if (params.sam2) {
  const all = new Float32Array(await (await fetch("/bench/sam2_features.f32")).arrayBuffer());
  let offset = 0;
  for (const [name, dims] of Object.entries(SAM2_DIMS)) {
    const count = dims.reduce((a, b) => a * b);
    sam2Features[name] = new ort.Tensor("float32", all.subarray(offset, offset + count), dims);
    offset += count;
  }
}
const sessionOptions = decoderSessionOptions("wasm", { enableProfiling: Boolean(params.profile) });
const sessions = {};
const loadMs = {};
for (const [name, url] of Object.entries(params.models)) {
  const t0 = performance.now();
  sessions[name] = await ort.InferenceSession.create(url, sessionOptions);
  loadMs[name] = performance.now() - t0;
}

function feeds(prompt, withOrigSize, sam2 = false) {
  const n = prompt.labels.length;
  const f = {
    ...(sam2 ? sam2Features : { image_embeddings: new ort.Tensor("float32", embedding, [1, 256, 64, 64]) }),
    // SAM 2 prompts are the same image points in its stretched frame.
    point_coords: new ort.Tensor("float32", Float32Array.from((sam2 ? prompt.sam2Coords : prompt.coords).flat()), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(prompt.labels), [1, n]),
    mask_input: new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
  };
  if (withOrigSize) f.orig_im_size = new ort.Tensor("float32", new Float32Array([H, W]), [2]);
  return f;
}

const takesExtent = (name) => sessions[name].inputNames.includes("valid_tokens");
// Exporter 7's per-image outputs (the first block's image projections), fed back as "cached_<name>": as in the
// worker, the first run on the image computes them (timed apart, `firstRunMs`), every decode after reuses them.
const perImageNames = (name) => sessions[name].outputNames.filter((o) => sessions[name].inputNames.includes(`cached_${o}`));
const perImage = {};
const firstRunMs = {};
const outputsRead = (name) => sessions[name].outputNames.filter((o) => !perImageNames(name).includes(o));
function withPerImage(name, f) {
  for (const o of perImageNames(name)) f[`cached_${o}`] = perImage[name][o];
  return f;
}

function chosenIndex(iou, multimask) {
  // Single-mask token (0) for multi-point prompts, else the best of the three ambiguity masks.
  if (!multimask) return 0;
  let best = 1;
  for (let k = 2; k < 4; k++) if (iou[k] > iou[best]) best = k;
  return best;
}

async function decode(name, prompt) {
  const iface = params.interfaces[name];
  const t0 = performance.now();
  const sam2 = iface.startsWith("sam2");
  const f = feeds(prompt, iface === "official", sam2);
  if (takesExtent(name)) f.valid_tokens = tokens(extent);
  const out = await sessions[name].run(withPerImage(name, f), outputsRead(name));
  const t1 = performance.now();
  const iou = out.iou_predictions.data;
  const k = chosenIndex(iou, prompt.multimask);
  let mask;
  if (sam2) {
    // As the worker: unclamped logits, the single-mask fallback, one bilinear resize to the image.
    const logits = Float32Array.from(unclampedLogits(out).data);
    const scores = Float32Array.from(iou);
    if (!prompt.multimask) applySingleMaskFallback(logits, scores, 65536);
    mask = maskFromLowRes(logits.subarray(k * 65536, (k + 1) * 65536), STRETCHED, [H, W]);
  } else if (iface === "official") {
    // The client's own threshold (web/js/mask-math.js), as the worker applies it to the official graph.
    mask = threshold(out.masks.data.subarray(k * H * W, (k + 1) * H * W));
  } else {
    // As the worker: a cropped run's logits are laid back into 256 x 256 planes (all four candidates).
    const [, c, h, w] = out.low_res_masks.dims;
    const logits = h * w === 65536 ? out.low_res_masks.data : padLowRes(out.low_res_masks.data, c, [h / 4, w / 4]);
    mask = maskFromLowRes(logits.subarray(k * 65536, (k + 1) * 65536), inputSize, [H, W]);
  }
  const t2 = performance.now();
  for (const t of Object.values(out)) t.dispose?.();
  return { runMs: t1 - t0, totalMs: t2 - t0, mask, k };
}

/**
 * `count` box prompts in one run of a lowres-interface decoder, prompt -> a binary mask per box (candidate 0,
 * as for a box). The boxes are the benchmark's box prompt shifted, so each is its own prompt.
 */
async function decodeBoxes(name, count) {
  const [[x0, y0], [x1, y1]] = params.prompts.find((p) => p.labels[0] === 2).coords;
  const coords = new Float32Array(count * 4);
  for (let b = 0; b < count; b++) coords.set([x0 + 7 * b, y0 + 5 * b, x1 - 3 * b, y1 - 6 * b], 4 * b);
  const f = {
    image_embeddings: new ort.Tensor("float32", embedding, [1, 256, 64, 64]),
    point_coords: new ort.Tensor("float32", coords, [count, 2, 2]),
    point_labels: new ort.Tensor("float32", new Float32Array(2 * count).map((_, i) => 2 + (i % 2)), [count, 2]),
    mask_input: new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
  };
  if (takesExtent(name)) f.valid_tokens = tokens([64, 64]);
  const t0 = performance.now();
  const out = await sessions[name].run(withPerImage(name, f), outputsRead(name));
  const t1 = performance.now();
  const masks = [];
  for (let b = 0; b < count; b++) {
    masks.push(maskFromLowRes(out.low_res_masks.data.subarray(4 * b * 65536, (4 * b + 1) * 65536), inputSize, [H, W]));
  }
  const t2 = performance.now();
  for (const t of Object.values(out)) t.dispose?.();
  return { runMs: t1 - t0, totalMs: t2 - t0 };
}

const names = Object.keys(params.models);
for (const n of names) {
  const none = new ort.Tensor("float32", new Float32Array(0), [0, 0, 0, 0]);
  const f = feeds(params.prompts[0], params.interfaces[n] === "official", params.interfaces[n].startsWith("sam2"));
  if (takesExtent(n)) f.valid_tokens = tokens(extent);
  for (const o of perImageNames(n)) f[`cached_${o}`] = none;
  const t0 = performance.now();
  perImage[n] = await sessions[n].run(f);
  firstRunMs[n] = performance.now() - t0;
}
// With --batch B, each lowres decoder also decodes 1 box and B boxes in one run, in the same interleaving.
// Graphs exported before the prompt axis was dynamic refuse two prompts: they are left out.
const batched = [];
for (const n of params.batch > 1 ? names.filter((m) => params.interfaces[m] === "lowres") : []) {
  if (await decodeBoxes(n, 2).then(() => true, () => false)) batched.push(n);
}
const series = [...names, ...batched.flatMap((n) => [`${n} 1 box`, `${n} ${params.batch} boxes`])];
const times = Object.fromEntries(series.map((n) => [n, { runMs: [], totalMs: [] }]));
const agreement = [];
const prompts = params.prompts;
for (let w = 0; w < params.warmup; w++) for (const n of names) await decode(n, prompts[w % prompts.length]);
for (let i = 0; i < params.decodes; i++) {
  const prompt = prompts[i % prompts.length];
  const order = i % 2 === 0 ? names : [...names].reverse();
  const results = {};
  for (const n of order) {
    results[n] = await decode(n, prompt);
    times[n].runMs.push(results[n].runMs);
    times[n].totalMs.push(results[n].totalMs);
  }
  for (const n of i % 2 === 0 ? batched : [...batched].reverse()) {
    const pair = [[`${n} 1 box`, 1], [`${n} ${params.batch} boxes`, params.batch]];
    for (const [key, count] of i % 2 === 0 ? pair : pair.reverse()) {
      const r = await decodeBoxes(n, count);
      times[key].runMs.push(r.runMs);
      times[key].totalMs.push(r.totalMs);
    }
  }
  if (i < prompts.length) {
    // Every decoder's mask against the first one's (the official fp32 graph) of the same model family.
    const first = (n) => names.find((m) => m.startsWith("sam2") === n.startsWith("sam2"));
    for (const n of names.filter((m) => m !== first(m))) {
      const [a, b] = [results[first(n)], results[n]];
      agreement.push({ prompt: i, decoder: n, k: [a.k, b.k], ...compareMasks(a.mask, b.mask) });
    }
  }
  status(`decode ${i + 1}/${params.decodes}`);
}
if (params.profile) for (const s of Object.values(sessions)) s.endProfiling();
window.benchResult = { crossOriginIsolated, threads: ort.env.wasm.numThreads, ortVersion: ort.env.versions?.web, loadMs, firstRunMs, times, agreement };
status("done");
