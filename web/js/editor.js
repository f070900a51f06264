// The editing state machine of one object: hover previews, the queue of committed prompts, candidates, undo/redo, keep. No DOM.
//
// Committed prompts (clicks, boxes, undo, candidate picks, keep) run strictly one after another; a hover
// preview is kept whole so a click on that very pixel reuses its decode. interrupt() drops everything of the
// image being edited that is still in flight (a hover decode, queued prompts), e.g. when another image opens.

import { lowResPlane } from "./mask-math.js";
import { chosenLowRes, chosenMask, PromptHistory } from "./prompts.js";
import { measure } from "./timing.js";

/** Records a User Timing measure from a pointer event to the frame that shows its mask (read by benchmarks). */
function measureToPaint(name, eventTime) {
  if (eventTime == null) return;
  requestAnimationFrame(() => measure(name, { start: eventTime, end: performance.now() }));
}

export class SegmentEditor {
  /**
   * @param {import("./decoder/decoder-client.js").DecoderClient} decoder
   * @param {object} handlers all optional:
   *   onChange() the prompts, the chosen mask or the undo state changed (redraw the controls and the overlay);
   *   onPreview() only the hover preview changed (redraw the overlay);
   *   onDecode(result, chosen, cause) a decode is on show, cause "hover" | "commit" | "history" | "pick";
   *   onKeep({mask, lowRes, score}) the chosen mask is kept as an object (before the prompts clear);
   *   onPrompts(points, box) a committed prompt is being decoded (draw its markers now);
   *   onPending(count) queued prompt changes; onError(error).
   */
  constructor(decoder, handlers = {}) {
    this.decoder = decoder;
    this.handlers = handlers;
    this.history = new PromptHistory();
    this.size = null; // [H, W] of the encoded image, the resolution of every mask
    this.ready = false; // the image's embedding is in the worker
    this.generation = 0; // bumped by interrupt(): work of an earlier generation is dropped
    this.hover = null; // the hover preview on show: {mask, result, pixel, state}
    this.lastHoverPixel = null;
    this.pending = 0;
    this.chain = Promise.resolve();
  }

  #emit(name, ...args) {
    this.handlers[name]?.(...args);
  }

  get state() {
    return this.history.current;
  }

  /** The chosen mask of the object being edited, or null. */
  get mask() {
    return chosenMask(this.state);
  }

  get hoverMask() {
    return this.hover?.mask ?? null;
  }

  /** The object being edited as an exportable {mask, lowRes, score}, or null when it has no mask yet. */
  get editing() {
    const state = this.state;
    const mask = chosenMask(state);
    return mask ? { mask, lowRes: chosenLowRes(state), score: state.result.scores[state.chosen] } : null;
  }

  /** Drops the hover in flight and every queued prompt; not ready until ready is set again. */
  interrupt() {
    this.generation++;
    this.ready = false;
    this.decoder.cancelHover();
    this.hover = null;
    this.lastHoverPixel = null;
  }

  /** Starts on a new image of [H, W] (call interrupt() first); ready once its embedding is in the worker. */
  begin(size) {
    this.size = size;
    this.history.clear();
    this.hover = null;
  }

  #promptFor(state, extraPoint = null) {
    const points = extraPoint ? [...state.points, extraPoint] : state.points;
    const maskInput = chosenLowRes(state);
    return {
      points,
      box: state.box,
      maskInput: maskInput ? Float32Array.from(maskInput) : null,
      // Like Meta's predictor: three candidates only for a lone click, where the intent is ambiguous.
      multimask: points.length === 1 && !state.box && !maskInput,
      outSize: this.size,
    };
  }

  /** Runs `task` after every earlier prompt change, unless interrupt() came first; resolves with its value. */
  enqueue(task) {
    const generation = this.generation;
    this.#emit("onPending", ++this.pending);
    const run = this.chain.then(() => (generation === this.generation ? task() : undefined));
    this.chain = run.catch((error) => this.#emit("onError", error)).finally(() => this.#emit("onPending", --this.pending));
    return this.chain.then(() => run).catch(() => undefined);
  }

  /** Previews the mask a click at pixel (x, y) would give; negative: a "remove" click. */
  hoverAt(x, y, negative, eventTime = null) {
    if (!this.ready) return;
    if (this.lastHoverPixel && this.lastHoverPixel[0] === x && this.lastHoverPixel[1] === y) return;
    this.lastHoverPixel = [x, y];
    const pixel = { x, y, label: negative ? 0 : 1 };
    const state = this.state;
    if (state.result?.cropped) {
      // Its logits are this preview's mask input: first decoded in full (once), then the latest pixel previewed.
      this.wholeState ??= this.enqueue(() => this.#whole(this.state)).finally(() => { this.wholeState = null; });
      this.wholeState.then(() => {
        if (this.lastHoverPixel?.[0] !== x || this.lastHoverPixel?.[1] !== y || this.state.result?.cropped) return;
        this.lastHoverPixel = null;
        this.hoverAt(x, y, negative, eventTime);
      });
      return;
    }
    const generation = this.generation;
    const prompt = this.#promptFor(state, pixel);
    this.decoder.hover(prompt, (result, error) => {
      if (generation !== this.generation) return;
      if (error) {
        this.#emit("onError", error);
        return;
      }
      // Kept whole: a click on this very pixel reuses the decode instead of running it again.
      this.hover = { mask: result.masks[result.best], result, pixel, state, prompt };
      this.#emit("onDecode", result, result.best, "hover");
      this.#emit("onPreview");
      measureToPaint("sam:hover-to-paint", eventTime);
    });
  }

  /** The pointer left the image: no preview. */
  leave() {
    this.lastHoverPixel = null;
    this.decoder.cancelHover();
    if (this.hover) {
      this.hover = null;
      this.#emit("onPreview");
    }
  }

  /** Adds a point at pixel (x, y); reuses the hover preview on show when it is exactly this click's mask. */
  point(x, y, negative, eventTime = null) {
    if (!this.ready) return undefined;
    const label = negative ? 0 : 1;
    const hover = this.hover;
    if (hover && !this.pending && hover.state === this.state &&
        hover.pixel.x === x && hover.pixel.y === y && hover.pixel.label === label) {
      this.hover = null;
      this.decoder.cancelHover();
      return this.enqueue(() => {
        const { result, prompt } = hover;
        // prompt: a preview has logits only under the image; #whole decodes it in full when they are fed back.
        const entry = { points: [...hover.state.points, hover.pixel], box: hover.state.box, result, chosen: result.best };
        this.history.push(result.cropped ? { ...entry, prompt } : entry);
        this.#settled("sam:click-to-paint", eventTime);
      });
    }
    return this.#commit((state) => ({ points: [...state.points, { x, y, label }] }), eventTime);
  }

  /** Sets the box prompt [x0, y0, x1, y1] (image pixels); boxes under 2 px a side are ignored. */
  box(box) {
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return undefined;
    return this.#commit(() => ({ box }));
  }

  /** Queues a prompt change; `change(state)` gives the new points/box from the state current at run time. */
  #commit(change, eventTime = null) {
    if (!this.ready) return undefined;
    this.hover = null;
    this.decoder.cancelHover();
    const generation = this.generation;
    return this.enqueue(async () => {
      const state = await this.#whole(this.state);
      const next = { ...state, ...change(state) };
      this.#emit("onPrompts", next.points, next.box); // the new marker shows while its decode runs
      try {
        const result = await this.decoder.decode(this.#promptFor({ ...state, points: next.points, box: next.box }));
        if (generation !== this.generation) return;
        this.history.push({ points: next.points, box: next.box, result, chosen: result.best });
        this.#emit("onDecode", result, result.best, "commit");
      } catch (error) {
        this.#emit("onError", error);
      }
      this.#settled("sam:click-to-paint", eventTime);
    });
  }

  /**
   * The state with its whole 256 x 256 logits: a click that kept its hover preview has them only under the
   * image (exact for every pixel shown), and a next prompt feeds them back as its mask input, where the
   * tokens outside the image count too. Decoded once more in full, only when that happens (a kept or
   * abandoned object never pays it). Runs inside the queue.
   */
  async #whole(state) {
    if (!state.result?.cropped) return state;
    const result = await this.decoder.decode(state.prompt);
    if (this.state !== state) return this.state;
    const whole = { ...state, result };
    delete whole.prompt;
    this.history.replace(whole);
    return this.state;
  }

    #settled(measure = null, eventTime = null) {
    this.lastHoverPixel = null;
    this.#emit("onChange");
    if (measure) measureToPaint(measure, eventTime);
  }

  #afterHistoryMove() {
    this.hover = null;
    this.decoder.cancelHover();
    this.#settled();
    const state = this.state;
    if (state.result) this.#emit("onDecode", state.result, state.chosen, "history");
  }

  undo() {
    return this.enqueue(() => { this.history.undo(); this.#afterHistoryMove(); });
  }

  redo() {
    return this.enqueue(() => { this.history.redo(); this.#afterHistoryMove(); });
  }

  /** Clears the prompts (an undoable step). */
  reset() {
    return this.enqueue(() => { this.history.reset(); this.#afterHistoryMove(); });
  }

  /** Shows candidate c (1-3) of a lone click's three instead of the best one. */
  pickCandidate(candidate) {
    return this.enqueue(async () => {
      const state = this.state;
      if (!state.result || !state.result.candidates.includes(candidate)) return;
      if (!state.result.masks[candidate]) {
        // A click that reused its hover preview only has the best candidate at full size so far.
        state.result.masks[candidate] = await this.decoder.upsample(lowResPlane(state.result.lowRes, candidate), this.size);
        if (this.state !== state) return;
      }
      this.history.replace({ ...state, chosen: candidate });
      this.#emit("onDecode", state.result, candidate, "pick");
      this.#emit("onChange");
    });
  }

  /** Keeps the chosen mask (handlers.onKeep) and starts the next object. */
  keep() {
    return this.enqueue(() => {
      const editing = this.editing;
      if (!editing) return;
      this.#emit("onKeep", { ...editing, lowRes: Float32Array.from(editing.lowRes) });
      this.history.clear();
      this.#afterHistoryMove();
    });
  }
}
