// Decoder start-up: asks the server for its model, picks the decoder file and opens it in the worker.

import { apiUrl, fetchModelInfo } from "../api.js";
import { formatBytes, plural } from "../format.js";
import { forgetRace, rememberedRace, rememberRace } from "./engine-race-memory.js";

/** A decoder name the server does not offer (its message lists the ones it does). */
export class UnknownDecoderError extends Error {}

/**
 * @param {import("./decoder-client.js").DecoderClient} decoder
 * @param {object} options {decoder: a name from /api/model (else the server's default), backend:
 *   "auto"|"wasm"|"webgpu", threads: WASM threads (0: automatic), server: the app's URL when not this page's}
 * @param {(text: string, progress?: number|null) => void} onStatus
 * @param {(started: {model, entry, info, runsOn: string}) => void} onEngine the decoder runs differently from
 *   what startDecoder answered: a worker that crashed while decoding was replaced by one on fewer threads
 * @returns {Promise<{model, entry, info, runsOn: string}>} /api/model, the chosen decoder entry, the worker's
 *   answer ({provider, threads, interface, modelBytes, fallbackReason}) and where it runs in plain words
 */
export async function startDecoder(decoder, { decoder: wanted = null, backend = "auto", threads = 0, server = null } = {}, onStatus = () => {}, onEngine = () => {}) {
  let model;
  try {
    model = await fetchModelInfo({ server });
  } catch (error) {
    onStatus("The server did not describe its model.");
    throw error;
  }
  const entry = wanted
    ? model.decoders.find((d) => d.name === wanted)
    : model.decoders.find((d) => d.name === model.default_decoder) || model.decoders[0];
  if (wanted && !entry) {
    // Refused before anything is downloaded (not after fetching the default in its place).
    const names = model.decoders.map((d) => d.name).join(", ");
    throw new UnknownDecoderError(`The server has no decoder named "${wanted}" (it offers: ${names}).`);
  }
  if (!entry) throw new Error("The server offers no decoder model.");
  let started = null; // the answer, once given
  decoder.onProgress = ({ stage, loaded, total, reason, info, attempt, attempts, resumed }) => {
    if (stage === "restart" && reason === "network") {
      onStatus(`The connection dropped while the decoder loaded; trying again (attempt ${loaded + 1} of ${total})…`, null);
    } else if (stage === "restart") {
      const what = reason === "crashed" ? "crashed" : "got stuck";
      onStatus(`The decoder ${what} while starting; starting it again (attempt ${loaded + 1} of ${total})…`, null);
    }
    if (stage === "model-retry") {
      // A dropped transfer of the model (resumable-download.js): `attempt` of `attempts`.
      const how = resumed ? `resuming at ${formatBytes(loaded)}${total ? ` of ${formatBytes(total)}` : ""}` : "downloading it again";
      onStatus(`The connection dropped while the decoder downloaded; ${how} (attempt ${attempt} of ${attempts})…`, total ? loaded / total : null);
    }
    // A worker that crashed while decoding is replaced; the prompts waiting on it run in its successor.
    if (stage === "recover") onStatus("The decoder crashed; restarting it and trying again…", null);
    if (stage === "recovered") {
      const fewer = started && info.provider === started.info.provider && info.threads < started.info.threads;
      onStatus(`The decoder crashed and was restarted${fewer ? ` on ${plural(info.threads, "thread")}` : ""}; your image and prompts were kept.`);
      if (fewer) {
        started = { ...started, info: { ...started.info, threads: info.threads, fallbackReason: info.fallbackReason }, runsOn: engineLine(info) };
        onEngine(started);
      }
    }
    if (stage === "model") onStatus(`Loading the decoder… ${formatBytes(loaded)}${total ? ` of ${formatBytes(total)}` : ""}`, total ? loaded / total : null);
  };
  onStatus("Loading the decoder…", null);
  // The versioned onnxruntime-web path is cached immutably (no revalidation on a repeat visit).
  const modelUrl = new URL(apiUrl(entry.url, server), location.href).href;
  const sha256 = entry.sha256 ?? null;
  // backend "auto": the engine an earlier start of this decoder timed faster in this browser, if any.
  const race = backend === "auto" ? rememberedRace(sha256, model.ort_version) : null;
  let info = await decoder.init(modelUrl, race?.provider ?? backend, threads, model.ort_version, sha256);
  if (race && info.provider === race.provider) info = { ...info, engineMs: race.engineMs, engineTimedAt: race.at };
  else if (race) forgetRace(); // it did not open (say, WebGPU is gone): the next start races again
  else if (backend === "auto" && info.engineMs) rememberRace(sha256, model.ort_version, info);
  started = { model, entry, info, runsOn: engineLine(info) };
  return started;
}

/** Where the decoder runs in plain words, from the worker's start answer. */
function engineLine(info) {
  let line = info.provider === "webgpu" ? "WebGPU" : `WebAssembly, ${plural(info.threads, "thread")}`;
  if (info.engineMs) {
    // The worker timed both engines and kept the faster (decoder-worker.js, backend "auto").
    const { webgpu, wasm } = info.engineMs;
    const [mine, other] = info.provider === "webgpu" ? [webgpu, wasm] : [wasm, webgpu];
    const when = info.engineTimedAt ? ", timed on an earlier visit" : "";
    line += ` (faster here than ${info.provider === "webgpu" ? "WebAssembly" : "WebGPU"}: ${Math.round(mine)} against ${Math.round(other)} ms a decode${when})`;
  }
  return line;
}
