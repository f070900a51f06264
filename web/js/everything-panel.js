// Everything mode's controls: start/hide, its progress and outcome, its settings, and pointing at its masks.

import { plural } from "./format.js";

export class EverythingPanel {
  /**
   * @param {import("./everything.js").EverythingMode} mode
   * @param {object} parts {button, exportButton, status, grid, iou, stability} elements
   * @param {object} handlers {image(): the client's image when ready to use, else null, onLayers() (its masks
   *   changed: repaint), onTake(item) (a mask clicked: keep it as an object), onError(error)}
   */
  constructor(mode, parts, handlers) {
    this.mode = mode;
    this.parts = parts;
    this.handlers = handlers;
    mode.onProgress = (fraction, text) => this.setStatus(text, fraction);
    parts.button.addEventListener("click", () => this.toggle());
  }

  get active() {
    return this.mode.active;
  }

  /** The settings' parameters (names of the server's API). */
  parameters() {
    const { grid, iou, stability } = this.parts;
    return {
      points_per_side: Number(grid.value),
      pred_iou_thresh: Number(iou.value),
      stability_score_thresh: Number(stability.value),
    };
  }

  setStatus(text, fraction = null) {
    this.parts.status.textContent = fraction == null ? text : `${text} ${Math.round(fraction * 100)}%`;
  }

  refresh() {
    const { button, exportButton } = this.parts;
    button.disabled = !this.handlers.image() || this.mode.running;
    button.textContent = this.mode.active ? "Hide everything" : "Segment everything";
    exportButton.disabled = !this.mode.active;
  }

  /** Forgets the masks and any job in flight (another image opened). */
  clear() {
    this.mode.clear();
    this.setStatus("");
    this.refresh();
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
      const count = await this.mode.run(image.id, image.uploadSize, this.parameters());
      if (count === null) return; // another image was opened meanwhile
      this.setStatus(count ? `${plural(count, "mask")}. Hover to highlight one, click to keep it.`
        : "No masks passed the thresholds: lower them in Settings.");
      this.handlers.onLayers();
    } catch (error) {
      this.setStatus("");
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
