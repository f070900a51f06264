// Everything mode: the server segments the whole image (POST /api/images/<id>/everything, then its server-sent
// events); the masks are drawn batch by batch as the server finds them, hovering highlights one, clicking moves it
// into the object list.

import { cancelEverything, startEverything } from "./api.js";
import { colorFor } from "./colors.js";
import { plural } from "./format.js";
import { maskStats } from "./mask-math.js";
import { decodeSegmentation } from "./rle.js";

/** Where a job stands once run() resolves: every mask, or what was found before the user cancelled it. */
export const FINISHED = "finished";
export const UNFINISHED = "unfinished";

/**
 * Follows a job's server-sent events: onMasks(update) per "masks" event ({masks, retracted}), onProgress(job)
 * per "progress"; resolves with the job's last event ({status, result?, message?}). The server sends a
 * reconnecting stream its updates again from the start: applying them is idempotent (see #apply).
 */
export function followEvents(eventsUrl, { onMasks, onProgress, signal }) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(eventsUrl);
    const close = () => source.close();
    signal.addEventListener("abort", () => {
      close();
      resolve(null);
    });
    const parse = (event) => JSON.parse(event.data);
    source.addEventListener("masks", (event) => onMasks(parse(event)));
    source.addEventListener("progress", (event) => onProgress(parse(event)));
    for (const name of ["done", "error", "cancelled"]) {
      source.addEventListener(name, (event) => {
        close();
        resolve(parse(event));
      });
    }
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) reject(new Error("The server closed the connection to the job."));
      // else the browser reconnects by itself
    };
  });
}

/** What identifies a mask in both the streamed updates and the final result (which carries no ids). */
const annotationKey = (a) => `${a.segmentation.counts}|${a.point_coords}|${a.predicted_iou}`;

export class EverythingMode {
  /** @param {(fraction: number|null, text: string) => void} onProgress */
  constructor(onProgress) {
    this.onProgress = onProgress;
    this.onMasks = () => {}; // the masks on show changed while a job runs (repaint)
    this.items = []; // {id, mask, color, score, stability, area, bbox, annotation}
    this.owner = null; // Int32Array: index of the smallest mask covering each pixel, -1 for none
    this.size = null;
    this.highlight = -1;
    this.runToken = 0;
    this.running = false;
    this.state = null; // FINISHED or UNFINISHED once a run ended with masks on show
    this.jobId = null; // the job running on the server, while it runs
    this.abort = null; // stops following the job's events
    this.nextColor = 3;
    this.taken = new Set();
    this.takenKeys = new Set();
  }

  get active() {
    return this.items.length > 0;
  }

  /** The annotations on show (COCO RLE), for the export. */
  get annotations() {
    return this.items.map((item) => item.annotation);
  }

  /**
   * Runs a job for imageId whose masks are [H, W], drawing them as they come; resolves with the number of masks,
   * or null when clear() (e.g. another image opened) or cancel() superseded the run (after a cancel the masks
   * found so far stay on show, `state` UNFINISHED). `image`: the uploaded Blob, sent along when crop layers need
   * the pixels.
   */
  async run(imageId, size, parameters = {}, image = null) {
    const token = ++this.runToken;
    this.#reset(size);
    this.running = true;
    const abort = new AbortController();
    this.abort = abort;
    try {
      this.onProgress(0, "Starting…");
      const onRetry = ({ attempt, attempts }) => {
        if (token === this.runToken) this.onProgress(0, `The connection dropped while starting; trying again (attempt ${attempt} of ${attempts})…`);
      };
      const { job_id: jobId, events_url: eventsUrl } = await startEverything(imageId, parameters, image, { onRetry });
      if (token !== this.runToken) {
        if (this.cancelPending === token) cancelEverything(jobId).catch(() => {}); // Cancel came before the job's id
        return null;
      }
      this.jobId = jobId;
      const last = await followEvents(eventsUrl, {
        signal: abort.signal,
        onMasks: (update) => {
          if (token !== this.runToken) return;
          this.#apply(update);
          this.onMasks();
        },
        onProgress: (job) => {
          if (token !== this.runToken) return;
          const found = this.items.length ? `Segmenting everything: ${plural(this.items.length, "mask")} so far…` : "Segmenting everything…";
          this.onProgress(job.progress ?? null, job.status === "queued" ? "Waiting for the server…" : found);
        },
      });
      if (token !== this.runToken || !last || last.status === "cancelled") return null;
      if (last.status === "error") throw new Error(last.message || last.error || "The server could not segment everything.");
      this.#finish(last.result?.annotations || []);
      this.state = FINISHED;
      return this.items.length;
    } catch (error) {
      if (token !== this.runToken) return null;
      throw error;
    } finally {
      abort.abort();
      if (token === this.runToken) {
        this.running = false;
        this.jobId = null;
      }
    }
  }

  #reset(size) {
    this.size = size;
    this.items = [];
    this.owner = null;
    this.highlight = -1;
    this.state = null;
    this.nextColor = 3;
    this.taken = new Set(); // ids of masks the user kept as objects
    this.takenKeys = new Set(); // and their annotations' keys (the result's masks have no ids)
  }

  #item(annotation, id, color) {
    const [H, W] = this.size;
    const [h, w] = annotation.segmentation.size;
    if (h !== H || w !== W) throw new Error(`A mask is ${w}×${h}; the image is ${W}×${H}.`);
    const mask = decodeSegmentation(annotation.segmentation);
    return {
      id, mask, color, annotation, score: annotation.predicted_iou, stability: annotation.stability_score,
      ...maskStats(mask, [H, W]),
    };
  }

  /** One "masks" event: retracted ids leave, new masks come (an id already on show, or taken, is skipped). */
  #apply({ masks = [], retracted = [] }) {
    const gone = new Set(retracted);
    const before = this.items[this.highlight];
    this.items = this.items.filter((item) => !gone.has(item.id));
    const present = new Set(this.items.map((item) => item.id));
    for (const { id, ...annotation } of masks) {
      if (present.has(id) || this.taken.has(id)) continue;
      this.items.push(this.#item(annotation, id, colorFor(this.nextColor++)));
    }
    this.highlight = before ? this.items.indexOf(before) : -1;
    this.#indexOwners();
  }

  /** The job's result: the streamed masks add up to it; they keep their colours, in the result's order. */
  #finish(annotations) {
    const streamed = new Map(this.items.map((item) => [annotationKey(item.annotation), item]));
    this.items = annotations
      .filter((annotation) => !this.takenKeys.has(annotationKey(annotation)))
      .map((annotation) => {
        const item = streamed.get(annotationKey(annotation));
        if (item) return { ...item, annotation };
        return this.#item(annotation, null, colorFor(this.nextColor++));
      });
    this.highlight = -1;
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

  /** Removes and returns mask i (it becomes an object; a running job does not bring it back). */
  take(i) {
    const [item] = this.items.splice(i, 1);
    if (item.id !== null) this.taken.add(item.id);
    this.takenKeys.add(annotationKey(item.annotation));
    this.highlight = -1;
    this.#indexOwners();
    return item;
  }

  /** Overlay layers for the stage: all masks, the highlighted one emphasised. */
  layers() {
    return this.items.map((item, i) => ({ mask: item.mask, color: item.color, emphasis: i === this.highlight ? "selected" : "dim" }));
  }

  /**
   * Stops the job in flight, on the server too (its run() resolves null); the masks found so far stay on show
   * as an unfinished result. Resolves with their number.
   */
  async cancel() {
    const jobId = this.jobId;
    if (this.running && !jobId) this.cancelPending = this.runToken;
    this.runToken++;
    this.running = false;
    this.jobId = null;
    this.abort?.abort();
    this.state = this.items.length ? UNFINISHED : null;
    if (jobId) await cancelEverything(jobId);
    return this.items.length;
  }

  clear() {
    this.jobId = null; // left to finish: the server may share it with another page asking the same
    this.runToken++;
    this.running = false;
    this.abort?.abort();
    this.items = [];
    this.owner = null;
    this.highlight = -1;
    this.state = null;
    this.taken = new Set();
    this.takenKeys = new Set();
  }
}
