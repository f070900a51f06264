// The status line (text + progress bar, one stage at a time) and the dismissable error banner.
//
// While an image is being opened its stages own the line; the decoder's download, if still running, shows
// beside it in a smaller second line instead of hiding the image's progress.

export class StatusLine {
  /** @param {object} parts {text, progress: <progress>, secondary, errorBanner, errorText, errorClose} elements */
  constructor({ text, progress, secondary, errorBanner, errorText, errorClose }) {
    Object.assign(this, { text, progress, secondary, errorBanner, errorText });
    this.imageBusy = false;
    errorClose.addEventListener("click", () => this.clearError());
  }

  /**
   * progress: a fraction (a bar), null (an indeterminate bar) or undefined (no bar). task: "image" (a stage
   * of opening an image: it owns the line until imageDone()), "decoder" (its download) or "page".
   */
  set(text, progress = undefined, task = "page") {
    if (task === "image") this.imageBusy = true;
    if (task === "decoder" && this.imageBusy) {
      this.secondary.textContent = text;
      return;
    }
    this.text.textContent = text;
    const bar = this.progress;
    bar.hidden = progress === undefined;
    if (progress === null) bar.removeAttribute("value");
    else if (progress !== undefined) bar.value = Math.max(0, Math.min(1, progress));
    if (progress !== undefined) bar.setAttribute("aria-label", text);
  }

  /** The image is open (or failed): the line is free again; the decoder's second line is done with too. */
  imageDone() {
    this.imageBusy = false;
  }

  /** Clears the second line (the decoder is ready). */
  decoderDone() {
    this.secondary.textContent = "";
  }

  get current() {
    return this.text.textContent;
  }

  showError(error) {
    this.errorText.textContent = error?.message || String(error);
    this.errorBanner.hidden = false;
  }

  clearError() {
    this.errorBanner.hidden = true;
  }
}
