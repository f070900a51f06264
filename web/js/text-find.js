// Text prompts: the server finds the boxes of a phrase (POST /api/images/<id>/text), the browser's decoder turns
// each box into a mask, as if the user had drawn it. The instances are candidates until kept. No DOM.

import { findText } from "./api.js";
import { colorFor } from "./colors.js";
import { lowResPlane, maskStats } from "./mask-math.js";

/**
 * One mask per box prompt ([x0, y0, x1, y1] in image pixels) at outSize [H, W]: {mask, lowRes, score} each.
 * One home for the decoding of many boxes (the page, <sam-segmenter> and the iframe use it).
 * @param {import("./decoder/decoder-client.js").DecoderClient} decoder
 */
export async function decodeBoxes(decoder, boxes, outSize) {
  // One decoder run for all boxes (a box prompt has the same two tokens whatever the box), each mask equal to
  // its own single run's.
  if (!boxes.length) return [];
  const prompts = boxes.map((box) => ({ points: [], box, maskInput: null, multimask: false }));
  const { results } = await decoder.decodeMany(prompts, { outSize, multimask: false });
  return results.map((result) => ({
    mask: result.masks[result.best],
    lowRes: Float32Array.from(lowResPlane(result.lowRes, result.best)),
    score: result.scores[result.best],
  }));
}

export class TextFind {
  /** @param {import("./client.js").SamClient} client */
  constructor(client) {
    this.client = client;
    this.items = []; // {label, score (the detector's), box, mask, lowRes, iou (the decoder's), area, bbox, color}
    this.highlight = -1;
    this.runToken = 0;
    this.running = false;
    this.lastAnswer = null; // the server's answer of the last find: {instances, model, ms, cached}
  }

  get active() {
    return this.items.length > 0;
  }

  /**
   * Finds `text` in the client's ready image; resolves with the number of instances, or null when clear() (another
   * image, another find) superseded the run. `onProgress(text)` tells the steps.
   */
  async run(text, parameters = {}, onProgress = () => {}) {
    const image = this.client.image;
    const token = ++this.runToken;
    this.running = true;
    try {
      onProgress("Finding “" + text + "” on the server…");
      const onRetry = ({ attempt, attempts }) =>
        token === this.runToken && onProgress(`The connection dropped while finding “${text}”; trying again (attempt ${attempt} of ${attempts})…`);
      const answer = await findText(image.id, text, image.upload, parameters, { server: this.client.server, onRetry });
      if (token !== this.runToken) return null;
      this.lastAnswer = answer;
      const boxes = answer.instances.map((instance) => instance.box);
      if (boxes.length) onProgress(`Found ${boxes.length}; making their masks…`);
      const decoded = await decodeBoxes(this.client.decoder, boxes, image.uploadSize);
      if (token !== this.runToken) return null;
      this.items = answer.instances.map((instance, i) => ({
        label: instance.label, score: instance.score, box: instance.box, mask: decoded[i].mask,
        lowRes: decoded[i].lowRes, iou: decoded[i].score, color: colorFor(i + 5), ...maskStats(decoded[i].mask, image.uploadSize),
      }));
      this.highlight = -1;
      return this.items.length;
    } finally {
      if (token === this.runToken) this.running = false;
    }
  }

  /** Removes and returns instance i (it becomes an object, or the box prompt of the editor). */
  take(i) {
    const [item] = this.items.splice(i, 1);
    this.highlight = -1;
    return item;
  }

  /** Overlay layers for the stage: every instance, the highlighted one emphasised. */
  layers() {
    return this.items.map((item, i) => ({ mask: item.mask, color: item.color, emphasis: i === this.highlight ? "selected" : "dim" }));
  }

  clear() {
    this.runToken++;
    this.running = false;
    this.items = [];
    this.highlight = -1;
  }
}
