// The Prompt panel: add/remove mode, undo/redo/reset, Keep object, and the candidate picker, bound to the editor.

import { renderCandidates } from "../candidates.js";

const $ = (id) => document.getElementById(id);

export class PromptPanel {
  /**
   * @param {import("../editor.js").SegmentEditor} editor
   * @param {import("../stage-view.js").StageView} view whose negativeMode the add/remove radios set
   */
  constructor(editor, view) {
    this.editor = editor;
    this.view = view;
    $("undo-button").addEventListener("click", () => editor.undo());
    $("redo-button").addEventListener("click", () => editor.redo());
    $("reset-button").addEventListener("click", () => editor.reset());
    $("commit-button").addEventListener("click", () => editor.keep());
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => this.setNegative(radio.value === "0" && radio.checked));
    }
  }

  /** "Remove area" (true) or "Add area" (false) for the next click or tap. */
  setNegative(on) {
    this.view.negativeMode = on;
    document.querySelector(`input[name="mode"][value="${on ? 0 : 1}"]`).checked = true;
  }

  refresh() {
    const { editor } = this;
    $("undo-button").disabled = !editor.history.canUndo;
    $("redo-button").disabled = !editor.history.canRedo;
    $("reset-button").disabled = editor.history.isEmpty;
    $("commit-button").disabled = !editor.mask;
    renderCandidates($("candidates"), $("candidate-list"), editor.state, (c) => editor.pickCandidate(c));
  }
}
