// The list of kept objects: each has its own colour, a name the user can change, and can be deleted or
// selected (the selection is what the single-object exports act on).

import { colorFor, cssColor } from "../colors.js";

export class ObjectList {
  /** @param {object} handlers {onChange(), onSelect(id|null)} */
  constructor(listElement, emptyElement, handlers) {
    this.list = listElement;
    this.empty = emptyElement;
    this.handlers = handlers;
    this.items = []; // {id, name, color, colorIndex, mask, lowRes, score, area}
    this.selectedId = null;
    this.nextId = 1;
  }

  get selected() {
    return this.items.find((item) => item.id === this.selectedId) || null;
  }

  /** The colour index the next kept object gets: one past the highest in use, so colours stay distinct. */
  get nextColorIndex() {
    return this.items.length ? Math.max(...this.items.map((o) => o.colorIndex)) + 1 : 0;
  }

  /** [r, g, b] of the next kept object (also the colour of the mask being edited). */
  get nextColor() {
    return colorFor(this.nextColorIndex);
  }

  /** The name the next kept object gets. */
  get nextName() {
    return `Object ${this.nextId}`;
  }

  /** Keeps {mask, lowRes, score, area}; it gets the next name and colour. */
  add(item) {
    const colorIndex = this.nextColorIndex;
    const object = { name: this.nextName, color: colorFor(colorIndex), colorIndex, ...item, id: this.nextId++ };
    this.items.push(object);
    this.render();
    this.handlers.onChange();
    return object;
  }

  remove(id) {
    const index = this.items.findIndex((item) => item.id === id);
    if (index < 0) return;
    this.items.splice(index, 1);
    if (this.selectedId === id) this.selectedId = null;
    this.render();
    this.handlers.onChange();
    // Keep keyboard users in the list rather than dropping focus to the page.
    const next = this.list.querySelectorAll("input")[Math.min(index, this.items.length - 1)];
    if (next) next.focus();
    else {
      // The list is empty: its "No objects" line takes the focus, so it is not lost to the page.
      this.empty.tabIndex = -1;
      this.empty.focus();
    }
  }

  /** Deletes the selected object; false when none is selected. */
  removeSelected() {
    if (!this.selected) return false;
    this.remove(this.selectedId);
    return true;
  }

  select(id) {
    this.selectedId = this.selectedId === id ? null : id;
    for (const row of this.list.children) row.classList.toggle("selected", Number(row.dataset.id) === this.selectedId);
    for (const button of this.list.querySelectorAll(".swatch")) {
      button.setAttribute("aria-pressed", String(Number(button.closest("li").dataset.id) === this.selectedId));
    }
    this.handlers.onSelect(this.selectedId);
  }

  clear() {
    this.items = [];
    this.selectedId = null;
    this.render();
    this.handlers.onChange();
  }

  render() {
    this.empty.hidden = this.items.length > 0;
    this.list.replaceChildren(
      ...this.items.map((item) => {
        const row = document.createElement("li");
        row.dataset.id = item.id;
        row.classList.toggle("selected", item.id === this.selectedId);

        const swatch = document.createElement("button");
        swatch.type = "button";
        swatch.className = "swatch";
        swatch.style.background = cssColor(item.color);
        swatch.setAttribute("aria-label", `Select ${item.name}`);
        swatch.setAttribute("aria-pressed", String(item.id === this.selectedId));
        swatch.addEventListener("click", () => this.select(item.id));

        const name = document.createElement("input");
        name.type = "text";
        name.value = item.name;
        name.setAttribute("aria-label", `Name of object ${item.id}`);
        name.addEventListener("change", () => {
          item.name = name.value.trim() || `Object ${item.id}`;
          name.value = item.name;
          swatch.setAttribute("aria-label", `Select ${item.name}`);
          remove.setAttribute("aria-label", `Delete ${item.name}`);
          this.handlers.onChange();
        });
        name.addEventListener("keydown", (event) => {
          if (event.key === "Enter") name.blur();
        });

        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "delete";
        remove.textContent = "Delete";
        remove.setAttribute("aria-label", `Delete ${item.name}`);
        remove.addEventListener("click", () => this.remove(item.id));

        const meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = `${item.area.toLocaleString()} px${item.score != null ? ` · IoU ${item.score.toFixed(2)}` : ""}`;
        row.append(swatch, name, remove, meta);
        return row;
      }),
    );
  }
}
