// Which pointer the user actually uses, mouse or touch, for the wording of instructions (body[data-pointer]).
//
// Touch support alone says little (touch laptops, desktop browsers that report no hover): the guess until
// the first pointer event is "any fine pointer means a mouse"; from then on the last pointer used decides.

export class PointerKind {
  /** @param {(kind: "mouse"|"touch") => void} onChange called when the user switches */
  constructor(onChange = () => {}) {
    this.kind = matchMedia("(any-pointer: fine)").matches ? "mouse" : "touch";
    document.body.dataset.pointer = this.kind;
    const seen = (event) => {
      const kind = event.pointerType === "touch" ? "touch" : event.pointerType ? "mouse" : null;
      if (!kind || kind === this.kind) return;
      this.kind = kind;
      document.body.dataset.pointer = kind;
      onChange(kind);
    };
    document.addEventListener("pointerdown", seen, { capture: true, passive: true });
    document.addEventListener("pointermove", seen, { capture: true, passive: true });
  }

  get touch() {
    return this.kind === "touch";
  }
}
