// The status line (text + progress bar) and the dismissable error banner.

export class StatusLine {
  /** @param {object} parts {text, progress: <progress>, errorBanner, errorText, errorClose} elements */
  constructor({ text, progress, errorBanner, errorText, errorClose }) {
    Object.assign(this, { text, progress, errorBanner, errorText });
    errorClose.addEventListener("click", () => this.clearError());
  }

  /** progress: a fraction (a bar), null (an indeterminate bar) or undefined (no bar). */
  set(text, progress = undefined) {
    this.text.textContent = text;
    const bar = this.progress;
    bar.hidden = progress === undefined;
    if (progress === null) bar.removeAttribute("value");
    else if (progress !== undefined) bar.value = Math.max(0, Math.min(1, progress));
    if (progress !== undefined) bar.setAttribute("aria-label", text);
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
