// The classroom view: the three SAM stages with live figures, the three candidate masks with their
// scores, and the chosen mask's low-res logits as a heatmap.

import { formatBytes, formatMs, median } from "./format.js";
import { paintHeatmap, paintLowResMask } from "./logit-paint.js";
import { lowResPlane } from "./mask-math.js";

const $ = (id) => document.getElementById(id);

export class Classroom {
  constructor() {
    this.section = $("classroom");
    this.decodeTimes = [];
  }

  get visible() {
    return !this.section.hidden;
  }

  show(on) {
    this.section.hidden = !on;
  }

  /** Shows the view while `checkbox` is checked. */
  bindToggle(checkbox) {
    checkbox.addEventListener("change", () => {
      this.show(checkbox.checked);
      if (!checkbox.checked) return;
      this.refresh();
      // It sits below the image, often below the fold: show that the switch did something.
      this.section.scrollIntoView({ block: "nearest" });
    });
  }

  setModel({ modelType, weights }) {
    $("cls-model").textContent = `${modelType} (${weights} weights)`;
  }

  setProvider(text) {
    $("cls-provider").textContent = text;
  }

  setImage({ encodeMs, cacheHit, bytes, wireBytes, format, downloadMs }) {
    $("cls-encode").textContent = cacheHit ? `none now: from the cache (first encode ${formatMs(encodeMs)})` : formatMs(encodeMs);
    const sent = wireBytes && wireBytes !== bytes ? `, ${formatBytes(wireBytes)} sent compressed` : "";
    $("cls-bytes").textContent = bytes == null ? "–" : `${formatBytes(bytes)} ${format}${sent}`;
    $("cls-download").textContent = formatMs(downloadMs);
    // The candidates and heatmap on show belong to the previous image.
    this.lastResult = null;
    this.lastChosen = null;
    this.refresh();
  }

  /** Records one decode and, when visible, shows its candidates and logits. */
  addDecode(result, chosen) {
    this.decodeTimes.push(result.decodeMs);
    if (this.decodeTimes.length > 20) this.decodeTimes.shift();
    this.lastResult = result;
    this.lastChosen = chosen;
    if (this.visible) this.refresh();
  }

  refresh() {
    $("cls-decode").textContent = formatMs(this.decodeTimes.at(-1));
    $("cls-decode-median").textContent = this.decodeTimes.length ? formatMs(median(this.decodeTimes)) : "–";
    const result = this.lastResult;
    const holder = $("cls-candidates");
    holder.replaceChildren();
    if (!result) {
      const heatmap = $("cls-heatmap");
      heatmap.getContext("2d").clearRect(0, 0, heatmap.width, heatmap.height);
      $("cls-heatmap-range").textContent = "–";
      return;
    }
    const k = result.scores.length;
    const shown = k === 4 ? [1, 2, 3] : [0];
    for (const c of shown) {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `Candidate ${c}: predicted IoU ${result.scores[c].toFixed(3)}`);
      paintLowResMask(canvas, lowResPlane(result.lowRes, c));
      if (c === this.lastChosen) canvas.classList.add("best");
      const caption = document.createElement("figcaption");
      caption.textContent = `#${c} · IoU ${result.scores[c].toFixed(3)}${c === this.lastChosen ? " · shown" : ""}`;
      figure.append(canvas, caption);
      holder.append(figure);
    }
    const chosen = this.lastChosen ?? result.best;
    const [low, high] = paintHeatmap($("cls-heatmap"), lowResPlane(result.lowRes, chosen));
    $("cls-heatmap-range").textContent = `logits from ${low.toFixed(2)} to ${high.toFixed(2)}; mask where > 0`;
  }
}
