// The export buttons' actions: which objects each one takes, their masks at the original resolution, the file.

import { cocoJson, copyPng, cutoutPng, download, maskPng, polygonsSvg, safeName } from "../exports.js";
import { resizeMaskNearest } from "../mask-math.js";

export class ExportActions {
  /**
   * @param {object} parts {client: SamClient, objects: ObjectList, everything: EverythingMode,
   *   onStatus(text), onError(error)}
   */
  constructor({ client, objects, everything, onStatus, onError }) {
    Object.assign(this, { client, objects, everything, onStatus, onError });
  }

  /** The object being edited, named and coloured as it would be when kept, or null. */
  #editing() {
    const editing = this.client.editor.editing;
    return editing && { ...editing, name: this.objects.nextName, color: this.objects.nextColor };
  }

  /** The object the single-object exports act on: the selected one, else the one being edited, else the last kept. */
  target() {
    return this.objects.selected || this.#editing() || this.objects.items.at(-1) || null;
  }

  /** Which object the single-object exports take, in words (shown next to the buttons). */
  describeTarget() {
    const target = this.target();
    if (!target) return "Make a mask first: hover over the image and click (or tap).";
    const why = target === this.objects.selected ? "selected" : this.objects.items.includes(target) ? "last kept" : "being edited";
    const others = this.objects.items.length > 1 ? "; click another object's swatch to export that one" : "";
    return `Cut-out and mask PNG: “${target.name}” (${why})${others}. COCO and SVG: all objects.`;
  }

  /** Every kept object, and the one being edited. */
  all() {
    const editing = this.#editing();
    return editing ? [...this.objects.items, editing] : [...this.objects.items];
  }

  /** The object's mask at the original image's resolution. */
  async #fullResolution(object) {
    const { originalSize, uploadSize } = this.client.image;
    if (originalSize[0] === uploadSize[0] && originalSize[1] === uploadSize[1]) return object.mask;
    if (object.lowRes) return this.client.decoder.upsample(object.lowRes, originalSize);
    return resizeMaskNearest(object.mask, uploadSize, originalSize);
  }

  #baseName() {
    return safeName(this.client.image.name.replace(/\.[^.]+$/, ""));
  }

  /** kind: "cutout" | "mask" | "copy" (the target) or "coco" | "svg" (all objects). */
  async run(kind) {
    const image = this.client.image;
    try {
      if (kind === "coco" || kind === "svg") {
        const full = await Promise.all(this.all().map(async (o) => ({ ...o, mask: await this.#fullResolution(o) })));
        if (kind === "coco") download(cocoJson(full, image.originalSize, image.name), `${this.#baseName()}_masks.json`);
        else download(polygonsSvg(full, image.originalSize), `${this.#baseName()}_polygons.svg`);
        return;
      }
      const target = this.target();
      if (!target) throw new Error("Make a mask first: hover and click on the image.");
      const maskPromise = this.#fullResolution(target);
      if (kind === "copy") {
        const png = maskPromise.then((mask) => cutoutPng(image.original, mask, image.originalSize)).then((r) => r.blob);
        await copyPng(png);
        this.onStatus(`Copied the cut-out of “${target.name}” to the clipboard.`);
        return;
      }
      const mask = await maskPromise;
      const name = `${this.#baseName()}_${safeName(target.name)}`;
      if (kind === "cutout") download((await cutoutPng(image.original, mask, image.originalSize)).blob, `${name}_cutout.png`);
      else download(await maskPng(mask, image.originalSize), `${name}_mask.png`);
    } catch (error) {
      this.onError(error);
    }
  }

  /** Every mask of everything mode as one COCO file (their masks have no logits: nearest-neighbour resize). */
  everythingCoco() {
    const { originalSize, uploadSize, name } = this.client.image;
    const list = this.everything.items.map((item, i) => ({
      name: `Mask ${i + 1}`, color: item.color, score: item.score,
      mask: resizeMaskNearest(item.mask, uploadSize, originalSize),
    }));
    download(cocoJson(list, originalSize, name), `${this.#baseName()}_everything.json`);
  }
}
