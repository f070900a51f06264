// The image with its mask overlay and prompt markers, and the pointer gestures on it. Coordinates handed
// out are pixels of the encoded (uploaded) image, which is also the resolution of the overlay.

import { OverlayPixels } from "./mask-paint.js";

const DRAG_THRESHOLD_PX = 6; // CSS pixels before a press becomes a box drag
const SVG_NS = "http://www.w3.org/2000/svg";
const MIN_SHOWN_SIDE_PX = 320; // smaller images are enlarged by a whole factor so they can be pointed at
const MIN_MARKER_RADIUS_PX = 6; // CSS pixels: a point marker stays visible (≥ 12 px across) on a phone
const MAX_ZOOM = 8;
// The most pixels the photo's canvas holds: Safari's limit for one canvas (4096 × 4096; a larger one stays blank).
// Larger photos are shown scaled down to it, still finer than any screen shows them unzoomed.
const MAX_PHOTO_PIXELS = 4096 * 4096;

function packRgba([r, g, b], alpha) {
  return ((Math.round(alpha * 255) << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

export class StageView {
  /**
   * @param {object} parts {stage, image, canvas, svg, zoomReset (optional: a button shown while zoomed)} elements
   * @param {object} handlers {onHover(x, y, time), onLeave(), onPoint(x, y, negative, time), onBox([x0, y0, x1, y1]),
   *   onDragBox(box | null)}; time is the pointer event's timestamp (performance.now() clock)
   */
  constructor({ stage, image, canvas, svg, zoomReset = null }, handlers) {
    this.stage = stage;
    this.zoomReset = zoomReset;
    this.zoom = { scale: 1, x: 0, y: 0 };
    this.touches = new Map(); // pointerId -> [clientX, clientY] of the fingers on the image
    this.pinch = null;
    zoomReset?.addEventListener("click", () => this.setZoom(1, 0, 0));
    this.image = image;
    this.canvas = canvas;
    this.svg = svg;
    this.handlers = handlers;
    this.size = null; // [H, W] of the overlay
    this.overlay = new OverlayPixels();
    this.base = null; // Uint32Array: kept objects, painted once per change
    this.press = null;
    this.negativeMode = false;
    this.#bindPointer();
  }

  /**
   * Shows a new image; maskSize [H, W] is the overlay (encoded image) resolution.
   * The photo is painted into the stage's own canvas, not shown by an <img> of a blob URL: engines keep an
   * <img>'s decoded pixels in caches of their own after it shows another photo (Firefox in its compositor,
   * Chromium in the renderer's decoded-image cache), 2 MB for each 800×600 photo of a session. A canvas holds
   * one photo, and its pixels go when the next is drawn.
   * @param {ImageBitmap} bitmap the photo at its original resolution (oriented as the model sees it)
   */
  setImage(bitmap, maskSize) {
    const scale = Math.min(1, Math.sqrt(MAX_PHOTO_PIXELS / (bitmap.width * bitmap.height)));
    this.image.width = Math.max(1, Math.round(bitmap.width * scale));
    this.image.height = Math.max(1, Math.round(bitmap.height * scale));
    const photo = this.image.getContext("2d");
    photo.imageSmoothingQuality = "high";
    photo.drawImage(bitmap, 0, 0, this.image.width, this.image.height);
    const enlarge = Math.max(1, Math.floor(MIN_SHOWN_SIDE_PX / Math.max(...maskSize)));
    this.image.style.width = enlarge > 1 ? `${maskSize[1] * enlarge}px` : "";
    this.image.style.imageRendering = enlarge > 1 ? "pixelated" : "";
    this.canvas.style.imageRendering = enlarge > 1 ? "pixelated" : "";
    this.size = maskSize;
    this.canvas.width = maskSize[1];
    this.canvas.height = maskSize[0];
    this.svg.setAttribute("viewBox", `0 0 ${maskSize[1]} ${maskSize[0]}`);
    this.context = this.canvas.getContext("2d");
    ({ frame: this.frame, pixels: this.pixels, base: this.base } = this.overlay.resize(maskSize));
    this.setZoom(1, 0, 0);
    this.drawPrompts([], null);
  }

  /** Zooms the image by `scale` (1: fit) and shifts it by (x, y) CSS pixels; pointer mapping follows. */
  setZoom(scale, x, y) {
    this.zoom = scale <= 1 ? { scale: 1, x: 0, y: 0 } : { scale, x, y };
    const { scale: s, x: tx, y: ty } = this.zoom;
    this.stage.style.transform = s === 1 ? "" : `translate(${tx}px, ${ty}px) scale(${s})`;
    if (this.zoomReset) this.zoomReset.hidden = s === 1;
    if (this.lastPrompts) this.drawPrompts(...this.lastPrompts);
  }

  #paint(target, mask, color, fillAlpha, edgeAlpha) {
    this.overlay.paint(target, mask, packRgba(color, fillAlpha), packRgba(color, edgeAlpha));
  }

  /** Repaints the layer of kept masks: [{mask, color, emphasis: "selected"|"dim"|undefined}]. */
  setLayers(layers) {
    if (!this.size) return;
    this.base.fill(0);
    for (const layer of layers) {
      const fillAlpha = layer.emphasis === "selected" ? 0.6 : layer.emphasis === "dim" ? 0.3 : 0.45;
      this.#paint(this.base, layer.mask, layer.color, fillAlpha, 0.95);
    }
  }

  /** Draws the kept layer plus the mask being edited and the hover preview. */
  render({ current = null, hover = null } = {}) {
    if (!this.size) return;
    this.pixels.set(this.base);
    if (current) this.#paint(this.pixels, current.mask, current.color, 0.5, 1);
    if (hover) this.#paint(this.pixels, hover.mask, hover.color, 0.35, 0.8);
    this.context.putImageData(this.frame, 0, 0);
  }

  /** Point markers ({x, y, label}) and the box, in overlay pixels; dragBox is the box being drawn. */
  drawPrompts(points, box, dragBox = null) {
    this.lastPrompts = [points, box, dragBox];
    this.svg.replaceChildren();
    if (!this.size) return;
    // CSS pixels per image pixel (zoom included): markers are never smaller than MIN_MARKER_RADIUS_PX on screen.
    const shown = this.canvas.getBoundingClientRect().width / this.size[1];
    const radius = Math.max(Math.max(this.size[0], this.size[1]) / 90, shown ? MIN_MARKER_RADIUS_PX / shown : 0);
    const rect = (b, cls) => {
      const r = document.createElementNS(SVG_NS, "rect");
      r.setAttribute("x", Math.min(b[0], b[2]));
      r.setAttribute("y", Math.min(b[1], b[3]));
      r.setAttribute("width", Math.abs(b[2] - b[0]));
      r.setAttribute("height", Math.abs(b[3] - b[1]));
      r.setAttribute("class", cls);
      r.setAttribute("fill", "none");
      r.setAttribute("stroke", "#fff");
      r.setAttribute("stroke-width", radius / 3);
      if (cls === "drag-box") r.setAttribute("stroke-dasharray", `${radius} ${radius / 2}`);
      this.svg.append(r);
    };
    if (box) rect(box, "box");
    if (dragBox) rect(dragBox, "drag-box");
    for (const p of points) {
      const c = document.createElementNS(SVG_NS, "circle");
      c.setAttribute("cx", p.x + 0.5);
      c.setAttribute("cy", p.y + 0.5);
      c.setAttribute("r", radius);
      c.setAttribute("fill", p.label === 1 ? "#17a34a" : "#d92d20");
      c.setAttribute("stroke", "#fff");
      c.setAttribute("stroke-width", radius / 3);
      c.setAttribute("class", p.label === 1 ? "point positive" : "point negative");
      this.svg.append(c);
    }
    if (!dragBox) this.#drawKeyboardCursor();
  }

  /** Shows (or hides, with null) the keyboard cursor at overlay pixel [x, y]. */
  setKeyboardCursor(point) {
    this.keyboardCursor = point;
    if (this.lastPrompts) this.drawPrompts(...this.lastPrompts);
  }

  #drawKeyboardCursor() {
    const point = this.keyboardCursor;
    if (!point || !this.size) return;
    const size = Math.max(this.size[0], this.size[1]) / 40;
    const path = document.createElementNS(SVG_NS, "path");
    const [x, y] = [point[0] + 0.5, point[1] + 0.5];
    path.setAttribute("d", `M${x - size} ${y}H${x + size}M${x} ${y - size}V${y + size}`);
    path.setAttribute("stroke", "#f59e0b");
    path.setAttribute("stroke-width", size / 6);
    path.setAttribute("class", "keyboard-cursor");
    this.svg.append(path);
  }

  #hover(event) {
    if (event.pointerType === "mouse" || event.pointerType === "pen") {
      this.handlers.onHover(...this.toImage(event), event.timeStamp);
    }
  }

  /** Overlay pixel [x, y] (integers, clamped into the image) under a pointer event. */
  toImage(event) {
    const bounds = this.canvas.getBoundingClientRect();
    const [H, W] = this.size;
    const x = Math.floor(((event.clientX - bounds.left) / bounds.width) * W);
    const y = Math.floor(((event.clientY - bounds.top) / bounds.height) * H);
    return [Math.min(W - 1, Math.max(0, x)), Math.min(H - 1, Math.max(0, y))];
  }

  #bindPointer() {
    const target = this.canvas;
    target.addEventListener("contextmenu", (event) => event.preventDefault());
    target.addEventListener("pointerdown", (event) => {
      if (!this.size || (event.button !== 0 && event.button !== 2)) return;
      event.preventDefault();
      if (event.pointerType === "touch" && this.#touchDown(event)) return;
      target.setPointerCapture(event.pointerId);
      this.press = {
        id: event.pointerId, startX: event.clientX, startY: event.clientY,
        start: this.toImage(event), negative: event.button === 2, dragging: false,
      };
    });
    target.addEventListener("pointermove", (event) => {
      if (!this.size) return;
      if (this.touches.has(event.pointerId)) this.touches.set(event.pointerId, [event.clientX, event.clientY]);
      if (this.pinch) {
        this.#pinchMove();
        return;
      }
      const press = this.press;
      if (press && press.id === event.pointerId) {
        const moved = Math.hypot(event.clientX - press.startX, event.clientY - press.startY);
        if (!press.dragging && moved > DRAG_THRESHOLD_PX && !press.negative) {
          press.dragging = true;
          this.handlers.onLeave();
        }
        if (press.dragging) this.handlers.onDragBox([...press.start, ...this.toImage(event)]);
        return;
      }
      this.#hover(event);
    });
    // Chromium dispatches pointermove aligned to animation frames, up to a frame after the pointer moved (10 ms
    // in the median on a bare page under headless Chromium), and pointerrawupdate (secure contexts) as it moves:
    // a hover starts from whichever comes first, and the editor ignores the other for the same pixel. Browsers
    // without it never fire it.
    target.addEventListener("pointerrawupdate", (event) => {
      if (!this.size || this.pinch || this.press?.id === event.pointerId) return;
      this.#hover(event);
    });
    const finish = (event, cancelled) => {
      this.touches.delete(event.pointerId);
      if (this.pinch) {
        // The gesture ends when the last finger lifts; a lifted finger never becomes a point.
        if (!this.touches.size) this.pinch = null;
        return;
      }
      const press = this.press;
      if (!press || press.id !== event.pointerId) return;
      this.press = null;
      if (cancelled) {
        this.handlers.onDragBox(null);
        return;
      }
      const end = this.toImage(event);
      if (press.dragging) {
        const box = [Math.min(press.start[0], end[0]), Math.min(press.start[1], end[1]),
          Math.max(press.start[0], end[0]), Math.max(press.start[1], end[1])];
        this.handlers.onDragBox(null);
        this.handlers.onBox(box);
      } else {
        this.handlers.onPoint(...press.start, press.negative || this.negativeMode, event.timeStamp);
      }
    };
    target.addEventListener("pointerup", (event) => finish(event, false));
    target.addEventListener("pointercancel", (event) => finish(event, true));
    target.addEventListener("pointerleave", (event) => {
      if (event.pointerType === "touch") return;
      if (!this.press) this.handlers.onLeave();
    });
  }

  /** A finger down: a second one starts a pinch (zoom + pan) instead of a point; true when it did. */
  #touchDown(event) {
    this.touches.set(event.pointerId, [event.clientX, event.clientY]);
    if (this.touches.size !== 2 && !this.pinch) return false;
    if (!this.pinch) {
      if (this.press) this.handlers.onDragBox(null);
      this.press = null;
      const rect = this.stage.getBoundingClientRect();
      const [distance, middle] = this.#fingers();
      this.pinch = { distance, middle, zoom: { ...this.zoom }, left: rect.left - this.zoom.x, top: rect.top - this.zoom.y };
    }
    return true;
  }

  #fingers() {
    const [[x0, y0], [x1, y1]] = [...this.touches.values()];
    return [Math.hypot(x1 - x0, y1 - y0) || 1, [(x0 + x1) / 2, (y0 + y1) / 2]];
  }

  #pinchMove() {
    if (this.touches.size < 2) return;
    const { distance, middle, zoom, left, top } = this.pinch;
    const [now, [mx, my]] = this.#fingers();
    const scale = Math.min(MAX_ZOOM, Math.max(1, zoom.scale * (now / distance)));
    // The image point that was under the fingers' midpoint stays under it.
    const localX = (middle[0] - left - zoom.x) / zoom.scale;
    const localY = (middle[1] - top - zoom.y) / zoom.scale;
    this.setZoom(scale, mx - left - scale * localX, my - top - scale * localY);
  }
}
