// Page-side handle on the decoder worker. Committed prompts (clicks, boxes, undo) run in order; hover
// previews run at most one at a time, the newest pointer position wins, and a hover result is dropped when
// a committed prompt was issued after it (so a click's mask always lands before the next hover).

import { startModuleWorker } from "./module-worker.js";
import { measure } from "../timing.js";

/**
 * Start-up watchdog. onnxruntime-web's threaded WASM start now and then blocks its worker for good (seen in
 * Firefox: about 1 page load in 25 never got past session creation, the worker's event loop frozen). While
 * it starts, the worker beats every HEARTBEAT_MS (downloads and session creation included); silence for
 * STALL_MS means it is stuck, so it is replaced by a fresh one. The last attempt runs on one thread, which
 * starts no thread workers to wait for.
 */
const HEARTBEAT_MS = 500;
const STALL_MS = 15_000;
const START_ATTEMPTS = 3;

/**
 * A start whose onnxruntime-web files did not arrive (a dropped connection; the model's own download retries by
 * itself) is tried again in a fresh worker, NETWORK_RETRIES times, WAIT_MS_PER_RETRY more before each; these do
 * not count as stuck starts (the last of which runs on one thread).
 */
const NETWORK_RETRIES = 3;
const WAIT_MS_PER_RETRY = 1000;

/**
 * A worker whose onnxruntime traps in WebAssembly while decoding is replaced too: the fresh worker starts the
 * same decoder, takes back the image the crashed one handed over, and runs the prompts that were waiting. A
 * prompt whose retry traps as well is refused, and after MAX_RECOVERIES replacements a trap is an error.
 */
const MAX_RECOVERIES = 3;

class DecoderStalled extends Error {}

/** The worker's onnxruntime hit a WebAssembly trap (docs/webkit.md): that worker's instance may be corrupt, so
 * only a fresh worker is used after it. */
class DecoderCrashed extends Error {}

/** The worker's start failed on the network (see NETWORK_RETRIES). */
class DecoderOffline extends Error {}

export class DecoderClient {
  /**
   * @param {(event: {stage: string, loaded?: number, total?: number, reason?: "stuck"|"crashed"}) => void}
   *   onProgress stages: "model" (download), "restart" (a start attempt failed), "recover" (a worker crashed
   *   while decoding and is being replaced), "recovered" (its replacement has the image and carries on; the
   *   event's info is the replacement's start answer, which may run on fewer threads)
   */
  constructor(onProgress = () => {}) {
    this.workerUrl = new URL("./decoder-worker.js", import.meta.url);
    this.#startWorker();
    this.onProgress = onProgress;
    this.nextId = 1;
    this.waiting = new Map(); // id -> {resolve, reject, message, transfer, posted, retried}, in order
    this.startArgs = null; // what the running decoder was started with: a crashed worker's successor starts the same
    this.recovering = null; // a Promise while a crashed worker is replaced: requests wait for it
    this.recoveries = 0;
    this.generation = 0;
    this.hoverInFlight = false;
    this.pendingHover = null; // {prompt, onResult}
    this.lastDecodeMs = null;
    this.stallTimer = null;
    this.onStall = null; // armed while the worker starts: called when it has been silent for STALL_MS
  }

  #startWorker() {
    const worker = startModuleWorker(this.workerUrl);
    this.worker = worker;
    // A replaced worker's late messages are dropped: its requests were given to its successor.
    worker.onmessage = (event) => worker === this.worker && this.#receive(event.data);
    worker.onerror = (event) => worker === this.worker && this.#failAll(event.message || "The decoder worker stopped.");
  }

  /** Posts `message` to the worker; while a crashed worker is replaced it waits (`now`: the replacement's own). */
  #request(message, transfer = [], now = false) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, message, transfer, posted: false, retried: false };
      this.waiting.set(id, entry);
      if (now || !this.recovering) this.#post(id, entry);
    });
  }

  #post(id, entry) {
    entry.posted = true;
    this.worker.postMessage({ ...entry.message, id }, entry.transfer);
  }

  #receive(message) {
    this.#feedWatchdog();
    if (message.type === "heartbeat") return;
    if (message.type === "progress") {
      this.onProgress(message);
      return;
    }
    if (message.type === "result" || message.type === "results") {
      // User Timing entries of the worker's session.run and upsampling, for benchmarks and profiling; a decode's
      // entry also tells how much WebAssembly memory the decoder holds after it (bench_memory.py reads it).
      const now = performance.now();
      measure("sam:decode", {
        start: now - message.decodeMs - message.postMs,
        duration: message.decodeMs,
        detail: { wasmMemoryBytes: message.wasmMemoryBytes },
      });
      measure("sam:upsample", { start: now - message.postMs, duration: message.postMs });
    }
    const waiter = this.waiting.get(message.id);
    if (!waiter) return;
    if (message.type === "error" && message.trap && this.startArgs && !this.recovering && this.recoveries < MAX_RECOVERIES) {
      if (waiter.retried) {
        this.waiting.delete(message.id);
        waiter.reject(new Error(`The decoder crashed on this prompt twice: ${message.message}`));
      } else {
        waiter.retried = true;
      }
      this.#recover(message.image);
      return;
    }
    this.waiting.delete(message.id);
    if (message.type === "error") {
      const kind = message.trap ? DecoderCrashed : message.network ? DecoderOffline : Error;
      waiter.reject(new kind(message.message));
    }
    else waiter.resolve(message);
  }

  /** Rejects the waiting requests `which` picks (all by default). */
  #failAll(text, which = () => true) {
    for (const [id, waiter] of this.waiting) {
      if (!which(waiter)) continue;
      this.waiting.delete(id);
      waiter.reject(new Error(text));
    }
  }

  /**
   * Replaces a worker that trapped while decoding: a fresh one starts the same decoder and takes back `image`
   * (what the crashed worker handed over), then every waiting request is posted to it, in order. A request
   * whose data was transferred to the crashed worker (a new image's embedding) cannot be sent again and is
   * refused.
   */
  async #recover(image) {
    this.recoveries++;
    this.#replaceWorker();
    this.recovering = (async () => {
      const info = await this.#open(this.startArgs);
      if (image) await this.#request({ type: "image", ...image }, Object.values(image.tensors).map(({ data }) => data.buffer), true);
      return info;
    })();
    this.onProgress({ stage: "recover", reason: "crashed" });
    let failure = null;
    let info = null;
    try {
      info = await this.recovering;
      // Its last start attempt runs on one thread: a later crash's successor starts the same.
      if (info.provider === "wasm") this.startArgs = { ...this.startArgs, threads: info.threads };
    } catch (error) {
      failure = error;
    } finally {
      this.recovering = null;
    }
    for (const [id, entry] of this.waiting) {
      if (failure || (entry.posted && entry.transfer.length)) {
        this.waiting.delete(id);
        entry.reject(new Error(failure
          ? `The decoder crashed and could not be restarted: ${failure.message}`
          : "The decoder crashed and was restarted; this request was lost with it. Try again."));
      } else {
        this.#post(id, entry);
      }
    }
    if (!failure) this.onProgress({ stage: "recovered", reason: "crashed", info });
  }

  /** A fresh worker in place of the current one; `starting`: the old one's start request is refused. */
  #replaceWorker(starting = false) {
    this.worker.terminate();
    if (starting) this.#failAll("The decoder worker was restarted.", (waiter) => waiter.message.type === "init");
    this.#startWorker();
  }

  #feedWatchdog() {
    if (!this.onStall) return; // armed only while the worker starts
    clearTimeout(this.stallTimer);
    this.stallTimer = setTimeout(this.onStall, STALL_MS);
  }

  /**
   * Downloads and opens the decoder; resolves with {provider, threads, interface, ..., restarts: how many
   * stuck or crashed workers were replaced}. A worker that stops answering while it starts (see STALL_MS), or
   * whose start traps in WebAssembly, is replaced; so is one whose onnxruntime-web files did not arrive
   * (NETWORK_RETRIES). WASM kept after the engines' race (backend "auto") runs in a fresh worker on the plain
   * onnxruntime-web build. modelSha256: the model's hex SHA-256 (/api/model), checked after the download.
   */
  async init(modelUrl, backend = "auto", threads = 0, ortVersion = null, modelSha256 = null) {
    this.startArgs = null;
    let info = await this.#open({ modelUrl, modelSha256, backend, threads, ortVersion });
    if (info.provider === "wasm" && info.ortBuild === "webgpu") {
      // WebGPU lost the engines' race or could not run the decoder, and the WASM session kept instead runs in
      // onnxruntime-web's WebGPU build, whose WebAssembly pauses for the GPU (asyncify): about 1.1x slower a
      // hover's decode in Chromium than the plain build (docs/benchmarks.md). A fresh worker opens the plain build,
      // and the old one's memory goes with it. The race's figures and reason still describe the choice.
      this.#replaceWorker();
      try {
        const plain = await this.#open({ modelUrl, modelSha256, backend: "wasm", threads, ortVersion });
        const reasons = [info.fallbackReason, plain.fallbackReason].filter(Boolean);
        info = { ...plain, engineMs: info.engineMs, fallbackReason: reasons.join(" ") || null, restarts: info.restarts + plain.restarts };
      } catch {
        // The plain build did not start (say, its files did not arrive): back to the build that ran.
        this.#replaceWorker(true);
        info = await this.#open({ modelUrl, modelSha256, backend, threads, ortVersion });
      }
    }
    // A crashed worker's successor starts what runs now: the engine the race chose, the threads that started.
    this.startArgs = {
      modelUrl, modelSha256, backend: info.provider, threads: info.provider === "wasm" ? info.threads : threads, ortVersion,
    };
    return info;
  }

  async #open({ modelUrl, modelSha256 = null, backend, threads, ortVersion }) {
    let networkRetries = 0;
    for (let attempt = 1; ; attempt++) {
      const lastAttempt = attempt === START_ATTEMPTS;
      const request = this.#request({
        type: "init", modelUrl, modelSha256, backend, threads: lastAttempt ? 1 : threads, ortVersion, heartbeatMs: HEARTBEAT_MS,
      }, [], true);
      request.catch(() => {}); // a replaced worker's request is rejected after the race was decided
      const stalled = new Promise((resolve, reject) => {
        this.onStall = () => reject(new DecoderStalled(`The decoder stopped answering while it started (${STALL_MS / 1000} s).`));
      }); // armed by the worker's first message: a worker still loading its own scripts is not stuck
      try {
        const info = await Promise.race([request, stalled]);
        // (A decoder that runs on one thread anyway has its own reason, singleThreadReason.)
        if (lastAttempt && threads !== 1 && info.provider === "wasm" && !info.singleThreadReason) {
          info.fallbackReason ??= "The decoder's WebAssembly threads did not start; it runs on one thread.";
        }
        return { ...info, restarts: attempt - 1 };
      } catch (error) {
        if (error instanceof DecoderOffline && networkRetries < NETWORK_RETRIES) {
          networkRetries++;
          attempt--; // not a stuck start: the next one keeps its threads
          this.onProgress({ stage: "restart", loaded: networkRetries, total: NETWORK_RETRIES + 1, reason: "network" });
          await new Promise((resolve) => setTimeout(resolve, WAIT_MS_PER_RETRY * networkRetries));
          this.#replaceWorker(true);
          continue;
        }
        const stalled = error instanceof DecoderStalled;
        if (!(stalled || error instanceof DecoderCrashed) || lastAttempt) throw error;
        this.#replaceWorker(true);
        this.onProgress({ stage: "restart", loaded: attempt, total: START_ATTEMPTS, reason: stalled ? "stuck" : "crashed" });
      } finally {
        this.onStall = null;
        clearTimeout(this.stallTimer);
      }
    }
  }

  /** Hands the wire-format embedding to the worker (the buffer is transferred, not copied). */
  setEmbedding(buffer, imageSize) {
    this.generation++;
    this.pendingHover = null;
    return this.#request({ type: "embedding", buffer, imageSize }, [buffer]);
  }

  /**
   * Decodes a committed prompt. prompt: {points: [{x, y, label}], box, maskInput, multimask, outSize}.
   * Resolves with {scores, lowRes, candidates, best, masks, decodeMs, postMs}.
   */
  async decode(prompt) {
    this.generation++;
    this.pendingHover = null;
    const result = await this.#request({ type: "decode", ...prompt, allMasks: true });
    this.lastDecodeMs = result.decodeMs;
    return result;
  }

  /**
   * Decodes many independent prompts on the image in as few runs as the decoder allows (the lowres graphs:
   * one run for all prompts with the same number of points, e.g. all boxes; the image side is computed once
   * per run). Each prompt's candidates equal those of its own decode(). Committed, in order with decode().
   * prompts: [{points: [{x, y, label}], box: [x0, y0, x1, y1]|null, maskInput: Float32Array|null,
   * multimask?: bool}] in image pixels; options {outSize: [H, W], multimask: the default for prompts that do
   * not say (false: the single-mask token, as for a box), allMasks: every candidate's mask (else the best's)}.
   * Resolves with {results: [{scores, lowRes, candidates, best, masks}] in the prompts' order, runs,
   * decodeMs, postMs}.
   */
  async decodeMany(prompts, { outSize, multimask = false, allMasks = false }) {
    this.generation++;
    this.pendingHover = null;
    const answer = await this.#request({ type: "decode-many", prompts, multimask, outSize, allMasks });
    return { results: answer.results, runs: answer.runs, decodeMs: answer.decodeMs, postMs: answer.postMs };
  }

  /** Asks for a hover preview; onResult(result) runs unless the preview went stale first. */
  hover(prompt, onResult) {
    this.pendingHover = { prompt, onResult };
    this.#pumpHover();
  }

  /** Forgets any hover not yet sent and ignores the one in flight (e.g. the pointer left the image). */
  cancelHover() {
    this.pendingHover = null;
    this.generation++;
  }

  async #pumpHover() {
    if (this.hoverInFlight || !this.pendingHover) return;
    const { prompt, onResult } = this.pendingHover;
    this.pendingHover = null;
    this.hoverInFlight = true;
    const generation = this.generation;
    try {
      // Cropped: only the logits under the image are computed (what a preview paints); see editor.point.
      const result = await this.#request({ type: "decode", ...prompt, allMasks: false, crop: true });
      this.lastDecodeMs = result.decodeMs;
      if (generation === this.generation) onResult(result);
    } catch (error) {
      if (generation === this.generation) onResult(null, error);
    } finally {
      this.hoverInFlight = false;
      this.#pumpHover();
    }
  }

  /** Binary mask of outSize [H, W] from one 256x256 logit map (e.g. for exports at full resolution). */
  async upsample(lowRes, outSize) {
    // Copied (a view's own elements only), not transferred: the request can be sent again if the worker
    // crashes (see #recover).
    const { mask } = await this.#request({ type: "upsample", lowRes: Float32Array.from(lowRes), outSize });
    return mask;
  }

  terminate() {
    this.worker.terminate();
    this.#failAll("The decoder worker was closed.");
  }
}
