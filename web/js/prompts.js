// The prompts of the object being edited, as an undo/redo history of immutable states.
// A state is {points: [{x, y, label}], box: [x0, y0, x1, y1] | null, result: decoder result | null, chosen}.

import { lowResPlane } from "./mask-math.js";

export const EMPTY_STATE = Object.freeze({ points: [], box: null, result: null, chosen: null });

export class PromptHistory {
  constructor() {
    this.states = [EMPTY_STATE];
    this.index = 0;
  }

  get current() {
    return this.states[this.index];
  }

  get canUndo() {
    return this.index > 0;
  }

  get canRedo() {
    return this.index < this.states.length - 1;
  }

  get isEmpty() {
    const s = this.current;
    return !s.points.length && !s.box;
  }

  push(state) {
    this.states = this.states.slice(0, this.index + 1);
    this.states.push(Object.freeze(state));
    this.index++;
  }

  /** Replaces the current state (e.g. another candidate picked) without a new undo step. */
  replace(state) {
    this.states[this.index] = Object.freeze(state);
  }

  undo() {
    if (this.canUndo) this.index--;
    return this.current;
  }

  redo() {
    if (this.canRedo) this.index++;
    return this.current;
  }

  /** Clears the prompts as an undoable step. */
  reset() {
    if (!this.isEmpty) this.push(EMPTY_STATE);
  }

  /** Forgets everything (new image, or the object was kept). */
  clear() {
    this.states = [EMPTY_STATE];
    this.index = 0;
  }
}

/** The chosen candidate's 256x256 logits of a state (the mask input for the next prompt), or null. */
export function chosenLowRes(state) {
  if (!state?.result) return null;
  return lowResPlane(state.result.lowRes, state.chosen);
}

/** The chosen candidate's full mask of a state, or null. */
export function chosenMask(state) {
  return state?.result ? state.result.masks[state.chosen] : null;
}
