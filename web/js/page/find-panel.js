// The Find panel: a phrase goes to the server, the instances come back as candidate objects (their masks made by
// the browser's decoder), each kept, all kept, or refined with clicks in the editor.

import { cssColor } from "../colors.js";
import { plural } from "../format.js";

export class FindPanel {
  /**
   * @param {import("../text-find.js").TextFind} find
   * @param {object} parts {form, input, button, status, list, keepAll, threshold} elements of the panel
   * @param {object} handlers {ready(): whether an image is ready, onLayers() (the instances changed: repaint),
   *   onKeep(item) (keep an instance as an object), onRefine(item) (edit its box with clicks),
   *   onStatus(text, fraction), onError(error)}
   */
  constructor(find, parts, handlers) {
    this.find = find;
    this.parts = parts;
    this.handlers = handlers;
    parts.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    parts.keepAll.addEventListener("click", () => this.keepAll());
  }

  refresh() {
    const ready = this.handlers.ready();
    this.parts.input.disabled = !ready;
    this.parts.button.disabled = !ready || this.find.running;
    this.parts.keepAll.hidden = !this.find.active;
    document.body.dataset.findCount = String(this.find.items.length);
  }

  #say(text, busy = false) {
    this.parts.status.textContent = text;
    this.handlers.onStatus(text, busy ? null : undefined);
  }

  /** Forgets the instances and any find in flight (another image opened). */
  clear() {
    this.find.clear();
    this.parts.status.textContent = "";
    this.render();
  }

  /** The settings' parameters (names of the server's API). */
  parameters() {
    const threshold = Number(this.parts.threshold.value);
    return Number.isFinite(threshold) && threshold >= 0 && threshold <= 1 ? { box_threshold: threshold } : {};
  }

  async run() {
    const text = this.parts.input.value.trim();
    if (!text || !this.handlers.ready() || this.find.running) return;
    this.find.clear();
    this.render();
    document.body.dataset.find = "running";
    this.refresh();
    try {
      const count = await this.find.run(text, this.parameters(), (line) => this.#say(line, true));
      if (count === null) return; // another image or find meanwhile
      const answer = this.find.lastAnswer;
      const random = answer.weights === "random" ? " (random detector weights: the boxes are meaningless)" : "";
      if (count) this.#say(`${plural(count, "instance")} of “${text}”${random}. Keep them all, keep one, or refine one with clicks.`);
      else this.#say(`Found no “${text}” in this image${random}.`);
      document.body.dataset.find = "done";
    } catch (error) {
      this.#say("");
      document.body.dataset.find = "error";
      this.handlers.onError(error);
    } finally {
      this.render();
    }
  }

  keepAll() {
    for (const item of this.find.items.splice(0)) this.handlers.onKeep(item);
    this.#say("Kept every instance.");
    this.render();
  }

  #take(index, then) {
    then(this.find.take(index));
    this.render();
  }

  render() {
    this.parts.list.replaceChildren(...this.find.items.map((item, index) => {
      const row = document.createElement("li");
      row.dataset.label = item.label;
      row.dataset.box = item.box.join(",");
      row.classList.toggle("highlight", index === this.find.highlight);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = cssColor(item.color);
      const name = document.createElement("span");
      name.textContent = item.label;
      const keep = document.createElement("button");
      keep.type = "button";
      keep.className = "keep";
      keep.textContent = "Keep";
      keep.setAttribute("aria-label", `Keep ${item.label} ${index + 1}`);
      keep.addEventListener("click", () => this.#take(index, this.handlers.onKeep));
      const refine = document.createElement("button");
      refine.type = "button";
      refine.className = "refine";
      refine.textContent = "Refine";
      refine.setAttribute("aria-label", `Refine ${item.label} ${index + 1} with clicks`);
      refine.addEventListener("click", () => this.#take(index, this.handlers.onRefine));
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `score ${item.score.toFixed(2)} · ${item.area.toLocaleString()} px`;
      for (const element of [row, keep, refine]) {
        element.addEventListener("mouseenter", () => { this.find.highlight = index; this.handlers.onLayers(); });
      }
      row.addEventListener("mouseleave", () => { this.find.highlight = -1; this.handlers.onLayers(); });
      row.append(swatch, name, keep, refine, meta);
      return row;
    }));
    this.refresh();
    this.handlers.onLayers();
  }
}
