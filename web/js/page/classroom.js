// The classroom view: the three SAM stages with live figures, the three candidate masks with their
// scores, and the chosen mask's low-res logits as a heatmap.

import { formatBytes, formatMs, median } from "../format.js";
import { paintHeatmap, paintLowResMask } from "../logit-paint.js";
import { lowResPlane } from "../mask-math.js";

const $ = (id) => document.getElementById(id);

const STEP_MS = 1800; // how long "play the three stages" dwells on each stage
const STAGES = ["encoder", "transfer", "decoder"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Classroom {
  constructor() {
    this.section = $("classroom");
    this.decodeTimes = [];
    this.figures = {}; // the last image's {encodeMs, cacheHit, bytes, wireBytes, format, downloadMs}
    this.armed = false; // "play the three stages" waits for the next click
    this.playing = false;
    $("cls-play").addEventListener("click", () => this.arm());
  }

  get visible() {
    return !this.section.hidden;
  }

  /** On: the presenter layout (the stages beside the image, large type; the gallery and exports hidden). */
  show(on) {
    this.section.hidden = !on;
    document.body.classList.toggle("presenting", on);
  }

  /** Shows the view while `checkbox` is checked. */
  bindToggle(checkbox) {
    checkbox.addEventListener("change", () => {
      this.show(checkbox.checked);
      if (!checkbox.checked) return;
      this.refresh();
      // Beside the image on a wide screen; on a narrow one it follows the image: the image stays in view.
    });
  }

  setModel({ modelType, weights, encoderPath }) {
    $("cls-model").textContent = `${modelType} (${weights} weights)`;
    $("cls-encoder-path").textContent = encoderPath || "–";
  }

  setProvider(text) {
    $("cls-provider").textContent = text;
  }

  setImage({ encodeMs, cacheHit, bytes, wireBytes, format, downloadMs }) {
    this.figures = { encodeMs, cacheHit, bytes, wireBytes, format, downloadMs };
    $("cls-encode").textContent = cacheHit
      ? `Not needed: encoded before (that took ${formatMs(encodeMs)})` : formatMs(encodeMs);
    const sent = wireBytes && wireBytes !== bytes ? `, ${formatBytes(wireBytes)} sent compressed` : "";
    $("cls-bytes").textContent = bytes == null ? "–" : `${formatBytes(bytes)} ${format}${sent}`;
    $("cls-download").textContent = formatMs(downloadMs);
    // The candidates and heatmap on show belong to the previous image.
    this.lastResult = null;
    this.lastChosen = null;
    this.refresh();
  }

  /** Highlights the stage running now ("encoder", "transfer", "decoder"; null: none). */
  setStage(stage) {
    for (const card of this.section.querySelectorAll(".stage-card")) {
      const on = card.dataset.stage === stage;
      card.classList.toggle("active", on);
      if (on) card.setAttribute("aria-current", "step");
      else card.removeAttribute("aria-current");
    }
  }

  /** Arms "play the three stages": the next click is shown stage by stage. */
  arm() {
    this.armed = true;
    $("cls-narration").textContent = "Now click the image: the three stages will light up in turn.";
  }

  /** Plays the stages of the click just decoded (when armed): encoder → transfer → decoder, with figures. */
  async playClick(result) {
    if (!this.armed || this.playing) return;
    this.armed = false;
    this.playing = true;
    const f = this.figures;
    const lines = {
      encoder: f.cacheHit
        ? `1 of 3 · Image encoder: this image was encoded before (${formatMs(f.encodeMs)}); the server reused it.`
        : `1 of 3 · Image encoder: the server turned the image into an embedding in ${formatMs(f.encodeMs)}, once.`,
      transfer: `2 of 3 · Embedding transfer: ${formatBytes(f.bytes)} came to your browser in ${formatMs(f.downloadMs)}, once.`,
      decoder: `3 of 3 · Mask decoder: your click became a mask in your browser in ${formatMs(result.decodeMs)}.`,
    };
    try {
      for (const stage of STAGES) {
        this.setStage(stage);
        $("cls-narration").textContent = lines[stage];
        await sleep(STEP_MS);
      }
      $("cls-narration").textContent = "Only stage 3 runs for every click: that is why masks follow the pointer live.";
    } finally {
      this.setStage(null);
      this.playing = false;
    }
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
    $("cls-heatmap").hidden = !result;
    $("cls-heatmap-placeholder").hidden = Boolean(result);
    if (!result) {
      $("cls-candidates-caption").textContent = "The decoder's masks (256×256) appear here after the first click.";
      $("cls-heatmap-range").textContent = "–";
      return;
    }
    // A lone click: three candidates, one shown; a refinement (more points, a box): the one mask it gives.
    const several = result.candidates.length > 1;
    $("cls-candidates-caption").textContent = several
      ? "The three candidate masks (256×256) and the decoder's own quality guess (IoU)"
      : "A refinement gives one mask (256×256): the one used, with the decoder's quality guess (IoU)";
    for (const c of result.candidates) {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `${several ? `Candidate ${c}` : "The mask used"}: predicted IoU ${result.scores[c].toFixed(3)}`);
      paintLowResMask(canvas, lowResPlane(result.lowRes, c));
      if (c === this.lastChosen) canvas.classList.add("best");
      const caption = document.createElement("figcaption");
      caption.textContent = several
        ? `#${c} · IoU ${result.scores[c].toFixed(3)}${c === this.lastChosen ? " · shown" : ""}`
        : `The mask used · IoU ${result.scores[c].toFixed(3)}`;
      figure.append(canvas, caption);
      holder.append(figure);
    }
    const chosen = this.lastChosen ?? result.best;
    const [low, high] = paintHeatmap($("cls-heatmap"), lowResPlane(result.lowRes, chosen));
    $("cls-heatmap-range").textContent = `logits from ${low.toFixed(2)} to ${high.toFixed(2)}; mask where > 0`;
  }
}
