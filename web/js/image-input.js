// Getting an image in: file picker, drag and drop, paste, gallery URLs. The client uploads a copy whose
// longest side is at most 1024 (the model never sees more) and keeps the original for display and export.

import { MODEL_SIDE, resizedSize } from "./mask-math.js";

export class ImageInputError extends Error {}

const MAX_PIXELS = 100e6; // beyond this a browser tab runs out of memory decoding it

/**
 * Decodes a picked/dropped/pasted file and prepares the upload.
 * @param {Blob} blob
 * @param {string} name
 * @returns {Promise<{name, original: ImageBitmap, originalSize: number[], upload: Blob, uploadSize: number[],
 *   downscaled: boolean}>} sizes are [H, W]
 */
export async function prepareImage(blob, name = "image") {
  if (!blob || !blob.size) throw new ImageInputError("The file is empty.");
  if (blob.type && !blob.type.startsWith("image/")) {
    throw new ImageInputError(`"${name}" is not an image (its type is ${blob.type}). Choose a JPEG, PNG or WebP file.`);
  }
  let original;
  try {
    original = await createImageBitmap(blob, { imageOrientation: "from-image" });
  } catch {
    throw new ImageInputError(`The browser cannot read "${name}" as an image. Try a JPEG, PNG or WebP file.`);
  }
  const originalSize = [original.height, original.width];
  if (original.width * original.height > MAX_PIXELS) {
    throw new ImageInputError(`"${name}" is ${original.width}×${original.height} pixels, too large to edit here.`);
  }
  if (Math.max(...originalSize) <= MODEL_SIDE) {
    // Small enough: send the bytes untouched, so the server encodes exactly the file the user chose.
    return { name, original, originalSize, upload: blob, uploadSize: originalSize, downscaled: false };
  }
  const uploadSize = resizedSize(originalSize[0], originalSize[1]);
  const canvas = new OffscreenCanvas(uploadSize[1], uploadSize[0]);
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(original, 0, 0, uploadSize[1], uploadSize[0]);
  const type = blob.type === "image/png" ? "image/png" : "image/jpeg";
  const upload = await canvas.convertToBlob({ type, quality: 0.95 });
  return { name, original, originalSize, upload, uploadSize, downscaled: true };
}

/** The first image file among a DataTransfer's files/items (drop or paste), or null. */
export function imageFromDataTransfer(transfer) {
  if (!transfer) return null;
  for (const file of transfer.files || []) if (file.type.startsWith("image/")) return file;
  for (const item of transfer.items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return transfer.files?.[0] || null;
}

/**
 * Wires the three ways in: file inputs, drops on dropTarget, and paste anywhere on the page.
 * @param {(file: Blob, name: string) => void} onImage
 */
export function bindImageInputs({ fileInputs, dropTarget, onImage, onError }) {
  for (const fileInput of fileInputs) {
    fileInput.addEventListener("change", () => {
      const file = fileInput.files?.[0];
      if (file) onImage(file, file.name);
      fileInput.value = "";
    });
  }
  // Files are taken wherever they are dropped: a browser would otherwise leave the app to show the file.
  // Dragged text is left alone (it may be meant for a name field).
  const setDragging = (on) => dropTarget.classList.toggle("dragging", on);
  const carriesFiles = (event) => Boolean(event.dataTransfer?.types?.includes("Files"));
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    setDragging(true);
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) setDragging(false); // left the window
  });
  document.addEventListener("drop", (event) => {
    setDragging(false);
    if (!carriesFiles(event)) return;
    event.preventDefault();
    const file = imageFromDataTransfer(event.dataTransfer);
    if (file) onImage(file, file.name || "dropped image");
    else onError(new ImageInputError("Nothing to use was dropped: drop an image file."));
  });
  document.addEventListener("paste", (event) => {
    if (event.target instanceof HTMLInputElement) return; // pasting text into a name field
    const file = imageFromDataTransfer(event.clipboardData);
    if (file) {
      event.preventDefault();
      onImage(file, file.name && file.name !== "image.png" ? file.name : "pasted image");
    }
  });
}

/** Fetches a gallery image as a Blob. */
export async function fetchImage(url, name) {
  let response;
  try {
    response = await fetch(url);
  } catch {
    throw new ImageInputError(`The gallery image "${name}" could not be downloaded.`);
  }
  if (!response.ok) throw new ImageInputError(`The gallery image "${name}" is missing (HTTP ${response.status}).`);
  return response.blob();
}
