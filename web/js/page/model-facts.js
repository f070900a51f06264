// Shows what the server runs: the visitor's demo-model note (operator details behind "details"), the note on
// a decoder held to one thread, and Settings' facts.

import { formatBytes } from "../format.js";

const $ = (id) => document.getElementById(id);

/** @param {object} started startDecoder's answer {model, entry, info} (showEngine shows its runsOn) */
export function showModelFacts({ model, entry, info }) {
  if (model.weights === "random") {
    // One short line for a visitor; the operator's details (paths, the command to fix it) behind "details".
    $("weights-details").textContent = model.weights_message || "This server runs a model with random weights.";
    $("weights-banner").hidden = false;
    console.info(`Segment Anything: ${$("weights-details").textContent}`);
  }
  $("weights-close").addEventListener("click", () => { $("weights-banner").hidden = true; });
  const memory = info.wasmMemory ? `, WebAssembly memory up to ${formatBytes(info.wasmMemory.maximumBytes)}` : "";
  $("fact-decoder").textContent = `${entry.name} (${info.interface} interface, ${formatBytes(info.modelBytes)}${memory})`;
  // Where threads cannot run the page says so and why (slower masks are otherwise a mystery).
  if (info.singleThreadReason) {
    $("threads-text").textContent = info.singleThreadReason;
    $("threads-banner").hidden = false;
  }
  $("threads-close").addEventListener("click", () => { $("threads-banner").hidden = true; });
  document.body.dataset.decoder = "ready";
  document.body.dataset.provider = info.provider;
}

/** Settings' engine fact: where the decoder runs (runsOn) and, on hover, why on one thread if it does. */
export function showEngine(info, runsOn) {
  $("fact-provider").textContent = runsOn;
  $("fact-provider").title = info.singleThreadReason || info.fallbackReason || "";
}
