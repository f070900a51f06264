// Times the official-interface decoder against the lowres variant in one page, interleaved (ABBA order),
// with onnxruntime-web WASM. A "decode" is prompt -> binary mask at image size, as the client needs it:
// official: session.run + threshold of the chosen full-size mask (mask-math.js threshold); lowres: session.run + upsample and
// threshold of the chosen low-res logits with the client's own mask-math.js.
import * as ort from "/ort/ort.wasm.min.mjs";
import { maskFromLowRes, resizedSize, compareMasks, threshold } from "/web/js/mask-math.js";

const params = await (await fetch("/bench/params.json")).json();
const status = (text) => { document.getElementById("status").textContent = text; };

ort.env.wasm.numThreads = params.threads;
ort.env.wasm.wasmPaths = "/ort/";
ort.env.logLevel = "error";

const [H, W] = params.image_hw;
const inputSize = resizedSize(H, W);
const embedding = new Float32Array(await (await fetch("/bench/embedding.f32")).arrayBuffer());
const sessionOptions = { executionProviders: ["wasm"], graphOptimizationLevel: "all", enableProfiling: Boolean(params.profile) };
const sessions = {};
const loadMs = {};
for (const [name, url] of Object.entries(params.models)) {
  const t0 = performance.now();
  sessions[name] = await ort.InferenceSession.create(url, sessionOptions);
  loadMs[name] = performance.now() - t0;
}

function feeds(prompt, withOrigSize) {
  const n = prompt.labels.length;
  const f = {
    image_embeddings: new ort.Tensor("float32", embedding, [1, 256, 64, 64]),
    point_coords: new ort.Tensor("float32", Float32Array.from(prompt.coords.flat()), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(prompt.labels), [1, n]),
    mask_input: new ort.Tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
  };
  if (withOrigSize) f.orig_im_size = new ort.Tensor("float32", new Float32Array([H, W]), [2]);
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
  const out = await sessions[name].run(feeds(prompt, iface === "official"));
  const t1 = performance.now();
  const iou = out.iou_predictions.data;
  const k = chosenIndex(iou, prompt.multimask);
  let mask;
  if (iface === "official") {
    // The client's own threshold (web/js/mask-math.js), as the worker applies it to the official graph.
    mask = threshold(out.masks.data.subarray(k * H * W, (k + 1) * H * W));
  } else {
    mask = maskFromLowRes(out.low_res_masks.data.subarray(k * 65536, (k + 1) * 65536), inputSize, [H, W]);
  }
  const t2 = performance.now();
  for (const t of Object.values(out)) t.dispose?.();
  return { runMs: t1 - t0, totalMs: t2 - t0, mask, k };
}

const names = Object.keys(params.models);
const times = Object.fromEntries(names.map((n) => [n, { runMs: [], totalMs: [] }]));
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
  if (i < prompts.length) {
    // Every decoder's mask against the first one's (the official fp32 graph).
    for (const n of names.slice(1)) {
      const [a, b] = [results[names[0]], results[n]];
      agreement.push({ prompt: i, decoder: n, k: [a.k, b.k], ...compareMasks(a.mask, b.mask) });
    }
  }
  status(`decode ${i + 1}/${params.decodes}`);
}
if (params.profile) for (const s of Object.values(sessions)) s.endProfiling();
window.benchResult = { crossOriginIsolated, threads: ort.env.wasm.numThreads, ortVersion: ort.env.versions?.web, loadMs, times, agreement };
status("done");
