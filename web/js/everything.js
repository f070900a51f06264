// Everything mode: the server segments the whole image (POST /api/images/<id>/everything, then polling);
// every mask is shown in colour, hovering highlights one, clicking moves it into the object list.

import { cancelEverything, fetchJobStatus, startEverything } from "./api.js";
import { colorFor } from "./colors.js";
import { maskStats } from "./mask-math.js";
import { decodeSegmentation } from "./rle.js";

const POLL_MS = 400;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class EverythingMode {
  /** @param {(fraction: number|null, text: string) => void} onProgress */
  constructor(onProgress) {
    this.onProgress = onProgress;
    this.items = []; // {mask, color, score, stability, area, bbox}
    this.owner = null; // Int32Array: index of the smallest mask covering each pixel, -1 for none
    this.size = null;
    this.highlight = -1;
    this.runToken = 0;
    this.running = false;
    this.annotations = [];
    this.jobId = null; // the job running on the server, while it runs
  }

  get active() {
    return this.items.length > 0;
  }

  /**
   * Runs a job for imageId whose masks are [H, W]; resolves with the number of masks, or null when clear()
   * (e.g. another image opened) or cancel() superseded the run, whose answers then belong to no image on
   * screen. `image`: the uploaded Blob, sent along when crop layers need the pixels.
   */
  async run(imageId, size, parameters = {}, image = null) {
    const token = ++this.runToken;
    this.running = true;
    try {
      this.onProgress(0, "Starting…");
      const { job_id: jobId, status_url: statusUrl } = await startEverything(imageId, parameters, image);
      if (token !== this.runToken) {
        if (this.cancelPending === token) cancelEverything(jobId).catch(() => {}); // Cancel came before the job's id
        return null;
      }
      this.jobId = jobId;
      for (;;) {
        if (token !== this.runToken) return null;
        const job = await fetchJobStatus(statusUrl);
        if (token !== this.runToken) return null;
        if (job.status === "cancelled") return null;
        if (job.status === "error") throw new Error(job.message || job.error || "The server could not segment everything.");
        if (job.status === "done") {
          this.#load(job.result?.annotations || [], size);
          return this.items.length;
        }
        this.onProgress(job.progress ?? null, job.status === "queued" ? "Waiting for the server…" : "Segmenting everything…");
        await sleep(POLL_MS);
      }
    } catch (error) {
      if (token !== this.runToken) return null;
      throw error;
    } finally {
      if (token === this.runToken) {
        this.running = false;
        this.jobId = null;
      }
    }
  }

  #load(annotations, [H, W]) {
    this.size = [H, W];
    this.annotations = annotations;
    this.items = annotations.map((annotation, i) => {
      const [h, w] = annotation.segmentation.size;
      if (h !== H || w !== W) throw new Error(`A mask is ${w}×${h}; the image is ${W}×${H}.`);
      const mask = decodeSegmentation(annotation.segmentation);
      return {
        mask, color: colorFor(i + 3), score: annotation.predicted_iou, stability: annotation.stability_score,
        ...maskStats(mask, [H, W]),
      };
    });
    this.#indexOwners();
  }

  #indexOwners() {
    const [H, W] = this.size;
    this.owner = new Int32Array(H * W).fill(-1);
    // Largest first, so smaller (more specific) masks win the pixels they share.
    const order = this.items.map((_, i) => i).sort((a, b) => this.items[b].area - this.items[a].area);
    for (const i of order) {
      const mask = this.items[i].mask;
      for (let p = 0; p < mask.length; p++) if (mask[p]) this.owner[p] = i;
    }
  }

  /** Index of the mask under pixel (x, y), or -1. */
  at(x, y) {
    if (!this.owner) return -1;
    return this.owner[y * this.size[1] + x];
  }

  /** Removes and returns mask i (it becomes an object). */
  take(i) {
    const [item] = this.items.splice(i, 1);
    this.annotations.splice(i, 1);
    this.highlight = -1;
    this.#indexOwners();
    return item;
  }

  /** Overlay layers for the stage: all masks, the highlighted one emphasised. */
  layers() {
    return this.items.map((item, i) => ({ mask: item.mask, color: item.color, emphasis: i === this.highlight ? "selected" : "dim" }));
  }

  /** Stops the job in flight, on the server too (its run() resolves null). */
  async cancel() {
    const jobId = this.jobId;
    if (this.running && !jobId) this.cancelPending = this.runToken;
    this.runToken++;
    this.running = false;
    this.jobId = null;
    if (jobId) await cancelEverything(jobId);
  }

  clear() {
    this.jobId = null; // left to finish: the server may share it with another page asking the same
    this.runToken++;
    this.running = false;
    this.items = [];
    this.annotations = [];
    this.owner = null;
    this.highlight = -1;
  }
}
