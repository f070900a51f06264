// The candidate picker: a lone click's three masks as radio buttons with the decoder's predicted IoU.

import { paintLowResMask } from "./logit-paint.js";
import { lowResPlane } from "./mask-math.js";

/**
 * Shows the candidates of state (a PromptHistory state) in `section` (hidden when there is no choice).
 * @param {(candidate: number) => void} onPick
 */
export function renderCandidates(section, list, state, onPick) {
  const result = state.result;
  const show = Boolean(result && result.candidates.length > 1);
  section.hidden = !show;
  if (!show) return;
  list.replaceChildren(...result.candidates.map((c, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "radio");
    button.setAttribute("aria-checked", String(c === state.chosen));
    button.setAttribute("aria-label", `Candidate ${i + 1}, predicted IoU ${result.scores[c].toFixed(2)}`);
    button.dataset.candidate = c;
    const canvas = document.createElement("canvas");
    paintLowResMask(canvas, lowResPlane(result.lowRes, c));
    const label = document.createElement("span");
    label.textContent = `${i + 1} · IoU ${result.scores[c].toFixed(2)}`;
    button.append(canvas, label);
    button.addEventListener("click", () => onPick(c));
    return button;
  }));
}
