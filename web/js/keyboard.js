// Keyboard shortcuts of the page, and prompting without a pointer: an arrow-key cursor on the focused image.

/**
 * With the image focused, arrow keys move a cursor (Shift: 10x faster) that previews like hovering, Space
 * adds a point there (Shift+Space a negative one). Positions are image pixels.
 */
export class KeyboardCursor {
  /**
   * @param {object} handlers {size(): [H, W] or null when the image is not ready, onMove(x, y, time),
   *   onPoint(x, y, negative, time), negativeMode(): bool, show([x, y] | null)}
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.position = null;
  }

  clear() {
    this.position = null;
    this.handlers.show(null);
  }

  /** Handles a keydown on the image; true when it was the cursor's key. */
  handle(event) {
    const size = this.handlers.size();
    if (!size || event.ctrlKey || event.metaKey || event.altKey) return false;
    const [H, W] = size;
    const step = Math.max(1, Math.round(Math.max(H, W) / 100)) * (event.shiftKey ? 10 : 1);
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    let [x, y] = this.position || [Math.floor(W / 2), Math.floor(H / 2)];
    if (event.key === " ") {
      this.handlers.onPoint(x, y, event.shiftKey || this.handlers.negativeMode(), event.timeStamp);
      return true;
    }
    if (!moves[event.key]) return false;
    const [dx, dy] = moves[event.key];
    [x, y] = [Math.min(W - 1, Math.max(0, x + dx)), Math.min(H - 1, Math.max(0, y + dy))];
    this.position = [x, y];
    this.handlers.show(this.position);
    this.handlers.onMove(x, y, event.timeStamp);
    return true;
  }
}

const isTyping = (target) =>
  (target instanceof HTMLInputElement && !["checkbox", "radio", "button", "file"].includes(target.type)) ||
  target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;

/**
 * Binds the page's shortcuts (listed in the help dialog).
 * @param {object} options {stage: the image element, cursor: KeyboardCursor, dialog: the help <dialog>,
 *   actions: {undo, redo, escape, keep, pick(n), toggleNegative, toggleClassroom, toggleEverything, help,
 *   deleteSelected}}
 */
export function bindKeyboard({ stage, cursor, dialog, actions }) {
  stage.addEventListener("blur", () => cursor.clear());
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target === stage && cursor.handle(event)) {
      event.preventDefault();
      return;
    }
    if (isTyping(target) || dialog.open) return;
    const ctrl = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    let handled = true;
    if (ctrl && key === "z") (event.shiftKey ? actions.redo : actions.undo)();
    else if (ctrl && key === "y") actions.redo();
    else if (ctrl || event.altKey) handled = false;
    else if (key === "escape") actions.escape();
    // Enter on a control does what the control does; elsewhere it keeps the object.
    else if (key === "enter" && !target.closest?.("button, a, summary, input, select, textarea")) actions.keep();
    else if (["1", "2", "3"].includes(key)) actions.pick(Number(key));
    else if (key === "n") actions.toggleNegative();
    else if (key === "c") actions.toggleClassroom();
    else if (key === "e") actions.toggleEverything();
    else if (key === "?") actions.help();
    else if (key === "delete" || key === "backspace") handled = actions.deleteSelected();
    else handled = false;
    if (handled) event.preventDefault();
  });
}
