// The sample gallery: the server's sample images as buttons that open them.

import { fetchGallery } from "../api.js";

function note(text) {
  return Object.assign(document.createElement("li"), { className: "muted", textContent: text });
}

function sampleButton(item, onOpen) {
  const button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-label", `Open the sample ${item.name}`);
  button.title = [item.name, item.source, item.license].filter(Boolean).join(" · ");
  const image = document.createElement("img");
  image.src = item.thumbnail || item.url;
  image.alt = "";
  image.loading = "lazy";
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = item.name;
  button.append(image, caption);
  button.addEventListener("click", () => onOpen(item));
  return button;
}

/** Fills `list` (a <ul>) with the samples of GET /api/gallery; onOpen({name, url, ...}) on a click. */
export async function showGallery(list, onOpen) {
  let items = [];
  try {
    items = await fetchGallery();
  } catch {
    // shown as "no samples" below: the app works without them
  }
  if (!items.length) {
    list.replaceChildren(note("No samples available."));
    return;
  }
  list.replaceChildren(...items.map((item) => {
    const row = document.createElement("li");
    row.append(sampleButton(item, onOpen));
    return row;
  }));
}
