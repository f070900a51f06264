// Everything mode's controls: start/hide/cancel, progress and outcome over the image, settings, pointing at masks.

import { plural } from "../format.js";

export class EverythingPanel {
  /**
   * @param {import("../everything.js").EverythingMode} mode
   * @param {object} parts {button, exportButton, status, grid, iou, stability, crops} elements of the panel, and
   *   {overlay, progress (role=progressbar), overlayText, cancel, close} of the message over the image
   * @param {object} handlers {image(): the client's image when ready to use, else null, onLayers() (its masks
   *   changed: repaint), onTake(item) (a mask clicked: keep it as an object), onStatus(text, fraction),
   *   onError(error)}
   */
  constructor(mode, parts, handlers) {
    this.mode = mode;
    this.parts = parts;
    this.handlers = handlers;
    this.hideTimer = null;
    mode.onProgress = (fraction, text) => this.setStatus(text, fraction);
    mode.onMasks = () => {
      this.handlers.onLayers(); // each batch's masks are drawn as they come
      this.refresh();
    };
    parts.button.addEventListener("click", () => this.toggle());
    parts.cancel.addEventListener("click", () => this.cancel());
    parts.close.addEventListener("click", () => this.#showOverlay(null));
  }

  /** The message over the image: {text, fraction (a bar; undefined: none), running (a Cancel)} or null. */
  #showOverlay(message, hideAfterMs = 0) {
    const { overlay, progress, overlayText, cancel, close } = this.parts;
    clearTimeout(this.hideTimer);
    overlay.hidden = !message;
    if (!message) return;
    overlayText.textContent = message.text;
    progress.hidden = message.fraction === undefined;
    if (message.fraction != null) {
      const percent = Math.round(message.fraction * 100);
      progress.setAttribute("aria-valuenow", String(percent));
      progress.setAttribute("aria-valuetext", `${percent}%`);
      progress.firstElementChild.style.width = `${percent}%`;
    } else {
      progress.removeAttribute("aria-valuenow"); // indeterminate
      progress.removeAttribute("aria-valuetext");
      progress.firstElementChild.style.width = "0";
    }
    cancel.hidden = !message.running;
    close.hidden = Boolean(message.running);
    if (hideAfterMs) this.hideTimer = setTimeout(() => this.#showOverlay(null), hideAfterMs);
  }

  get active() {
    return this.mode.active;
  }

  /** The settings' parameters (names of the server's API). */
  parameters() {
    const { grid, iou, stability, crops } = this.parts;
    return {
      points_per_side: Number(grid.value),
      pred_iou_thresh: Number(iou.value),
      stability_score_thresh: Number(stability.value),
      crop_n_layers: Number(crops.value),
    };
  }

  setStatus(text, fraction = null) {
    const line = fraction == null ? text : `${text} ${Math.round(fraction * 100)}%`;
    this.parts.status.textContent = line;
    if (this.mode.running) {
      this.#showOverlay({ text: line, fraction, running: true });
      this.handlers.onStatus(line, fraction);
    }
  }

  /** The outcome, in the panel and over the image (where the user is looking). */
  #outcome(text, hideAfterMs = 0) {
    this.parts.status.textContent = text;
    this.#showOverlay(text ? { text } : null, hideAfterMs);
    if (text) this.handlers.onStatus(text);
  }

  refresh() {
    const { button, exportButton } = this.parts;
    button.disabled = !this.handlers.image() || this.mode.running;
    button.textContent = this.mode.active && !this.mode.running ? "Hide everything" : "Segment everything";
    exportButton.disabled = !this.mode.active || this.mode.running;
  }

  /** Forgets the masks and any job in flight (another image opened). */
  clear() {
    this.mode.clear();
    this.#outcome("");
    this.refresh();
  }

  /** Stops the job in flight (on the server too); the masks found so far stay, as an unfinished result. */
  async cancel() {
    if (!this.mode.running) return;
    try {
      const count = await this.mode.cancel();
      if (count) {
        this.#outcome(`Cancelled: unfinished, ${plural(count, "mask")} found before stopping. Hover to highlight one, click to keep it.`);
      } else this.#outcome("Cancelled: no masks.", 4000);
      this.handlers.onLayers();
    } catch (error) {
      this.#outcome("");
      this.handlers.onError(error);
    } finally {
      this.refresh();
    }
  }

  /** Starts a job, or hides the masks on show. */
  async toggle() {
    const image = this.handlers.image();
    if (!image || this.mode.running) return;
    if (this.mode.active) {
      this.clear();
      this.handlers.onLayers();
      return;
    }
    this.parts.button.disabled = true;
    try {
      const count = await this.mode.run(image.id, image.uploadSize, this.parameters(), image.upload);
      if (count === null) return; // cancelled, or another image was opened meanwhile
      if (count) this.#outcome(`${plural(count, "mask")}. Hover to highlight one, click to keep it.`, 8000);
      else this.#outcome("No masks passed the thresholds: lower them in Settings.");
      this.handlers.onLayers();
    } catch (error) {
      this.#outcome("");
      this.handlers.onError(error);
    } finally {
      this.refresh();
    }
  }

  /** Highlights the mask under pixel (x, y); false when everything mode is off (the editor's hover then). */
  hoverAt(x, y) {
    if (!this.mode.active) return false;
    const index = this.mode.at(x, y);
    if (index !== this.mode.highlight) {
      this.mode.highlight = index;
      this.handlers.onLayers();
    }
    return true;
  }

  leave() {
    if (this.mode.active && this.mode.highlight >= 0) {
      this.mode.highlight = -1;
      this.handlers.onLayers();
    }
  }

  /** Keeps the mask under pixel (x, y) as an object; false when everything mode is off. */
  pointAt(x, y) {
    if (!this.mode.active) return false;
    const index = this.mode.at(x, y);
    if (index >= 0) {
      this.handlers.onTake(this.mode.take(index));
      this.refresh();
    }
    return true;
  }
}
