// Files a user can take away, at the original image's resolution: a cut-out (transparent PNG cropped to
// the object), a mask PNG, COCO RLE JSON and SVG polygons of all objects; and the cut-out on the clipboard.

import { maskStats } from "./mask-math.js";
import { encodeMask } from "./rle.js";
import { maskToPolygons, polygonsToPath } from "./contours.js";
import { cssColor } from "./colors.js";

export class ExportError extends Error {}

function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function pngOf(canvas) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new ExportError("The browser could not make a PNG."))), "image/png"));
}

/** Transparent PNG of the object: the original pixels inside the mask, cropped to its bounding box. */
export async function cutoutPng(original, mask, [H, W]) {
  const { bbox } = maskStats(mask, [H, W]);
  if (!bbox) throw new ExportError("The mask is empty: there is nothing to cut out.");
  const [x0, y0, w, h] = bbox;
  const canvas = canvasOf(w, h);
  const context = canvas.getContext("2d");
  context.drawImage(original, x0, y0, w, h, 0, 0, w, h);
  const pixels = context.getImageData(0, 0, w, h);
  const data = pixels.data;
  for (let y = 0; y < h; y++) {
    const row = (y0 + y) * W + x0;
    for (let x = 0; x < w; x++) if (!mask[row + x]) data[(y * w + x) * 4 + 3] = 0;
  }
  context.putImageData(pixels, 0, 0);
  return { blob: await pngOf(canvas), bbox };
}

/** Opaque PNG of the mask: white object on black, the original image's size. */
export async function maskPng(mask, [H, W]) {
  const canvas = canvasOf(W, H);
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(W, H);
  const words = new Uint32Array(pixels.data.buffer);
  for (let i = 0; i < mask.length; i++) words[i] = mask[i] ? 0xffffffff : 0xff000000;
  context.putImageData(pixels, 0, 0);
  return pngOf(canvas);
}

/** The COCO categories of `objects` in order of first use: an object's `category` (the phrase a text prompt
 * found it by), else "object". Returns {categories: [{id, name}], idOf(object)}. */
export function cocoCategories(objects) {
  const names = [...new Set(objects.map((object) => object.category || "object"))];
  return {
    categories: names.map((name, i) => ({ id: i + 1, name })),
    idOf: (object) => names.indexOf(object.category || "object") + 1,
  };
}

/**
 * COCO-style JSON: one image, one annotation per object with compressed RLE, under its category.
 * @param {{name: string, mask: Uint8Array, score?: number, category?: string}[]} objects masks at the image's [H, W]
 */
export function cocoJson(objects, [H, W], fileName) {
  const { categories, idOf } = cocoCategories(objects);
  const annotations = objects.map((object, i) => ({ ...cocoAnnotation(object, [H, W], i + 1), category_id: idOf(object) }));
  const document = {
    info: { description: "Masks from Segment Anything in the browser", date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: fileName, width: W, height: H }],
    categories,
    annotations,
  };
  return new Blob([JSON.stringify(document)], { type: "application/json" });
}

/** One COCO annotation (compressed RLE, area, XYWH bbox, predicted IoU) of an object {mask, name?, score?}. */
export function cocoAnnotation(object, [H, W], id) {
  const { area, bbox } = maskStats(object.mask, [H, W]);
  const annotation = {
    id, image_id: 1, category_id: 1, iscrowd: 0, name: object.name,
    segmentation: encodeMask(object.mask, [H, W]), area, bbox: bbox || [0, 0, 0, 0],
  };
  if (object.score != null) annotation.predicted_iou = object.score;
  return annotation;
}

const escapeXml = (text) => text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** SVG with one even-odd filled path per object, in the original image's pixel coordinates. */
export function polygonsSvg(objects, [H, W]) {
  const paths = objects.map((object) => {
    const d = polygonsToPath(maskToPolygons(object.mask, [H, W]));
    const name = escapeXml(object.name);
    const category = escapeXml(object.category || "object");
    return `  <path data-name="${name}" data-category="${category}" fill="${cssColor(object.color)}" fill-opacity="0.6" fill-rule="evenodd" d="${d}"><title>${name}</title></path>`;
  });
  const svg = `<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">\n${paths.join("\n")}\n</svg>\n`;
  return new Blob([svg], { type: "image/svg+xml" });
}

/** Saves a Blob through a temporary link. */
export function download(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Puts a PNG on the clipboard; throws ExportError with the reason where the browser refuses. */
export async function copyPng(blobOrPromise) {
  if (!navigator.clipboard?.write || typeof ClipboardItem === "undefined") {
    throw new ExportError("This browser cannot copy images to the clipboard; use “Cut-out PNG” instead.");
  }
  try {
    // Passing the promise keeps the user gesture alive in Safari while the PNG is being made.
    await navigator.clipboard.write([new ClipboardItem({ "image/png": blobOrPromise })]);
  } catch (error) {
    throw new ExportError(`The browser refused to copy the image (${error.message}).`);
  }
}

/** A file-name-safe version of a name. */
export const safeName = (name) => name.trim().replace(/[^\w.-]+/g, "_").replace(/^_+|_+$/g, "") || "object";
