// The /embed page's postMessage bridge: messages from allowed host origins drive its <sam-segmenter>.
//
// In:  {type: "sam:open", image: url | Blob, id?}, {type: "sam:segment", points, box, multimask, id?} or
//      {type: "sam:segment", text, parameters?, id?} (one mask per instance found),
//      {type: "sam:keep", id?}, {type: "sam:clear", id?}
// Out: {type: "sam:ready", width, height, id?}, {type: "sam:mask", masks, id?}, {type: "sam:objects", objects, id?},
//      {type: "sam:error", code, message, id?}; replies carry the request's id, messages the user's own
//      pointer causes carry none. Messages from origins outside SAM_EMBED_ORIGINS are ignored (logged once).

import "./sam-segmenter.js";

const element = document.querySelector("sam-segmenter");
const allowedOrigins = fetch(new URL("./origins.json", import.meta.url))
  .then((response) => response.json())
  .then((body) => body.embed_origins)
  .catch(() => []);
const warned = new Set();
let hostOrigin = null; // where unsolicited messages go: the origin that last spoke to us, else our parent's
let handling = 0; // requests in progress: the element's events they cause are answered as replies instead

async function allows(origin) {
  if (origin === location.origin) return true;
  const list = await allowedOrigins;
  return list.includes("*") || list.includes(origin);
}

async function tellHost(message) {
  if (window.parent === window) return;
  const parentOrigin = hostOrigin || location.ancestorOrigins?.[0] || null;
  if (parentOrigin && (await allows(parentOrigin))) window.parent.postMessage(message, parentOrigin);
}

const requests = {
  "sam:open": async ({ image }) => ({ type: "sam:ready", ...(await element.open(image)) }),
  "sam:segment": async ({ points, box, multimask, text, parameters }) =>
    ({ type: "sam:mask", ...(await element.segment({ points, box, multimask, text, parameters })) }),
  "sam:keep": async () => {
    await element.keep();
    return { type: "sam:objects", objects: element.getObjects() };
  },
  "sam:clear": async () => {
    element.clear();
    return { type: "sam:objects", objects: element.getObjects() };
  },
};

window.addEventListener("message", async (event) => {
  const message = event.data;
  if (!message || typeof message.type !== "string" || !message.type.startsWith("sam:")) return; // someone else's
  if (!(await allows(event.origin))) {
    if (!warned.has(event.origin)) {
      warned.add(event.origin);
      console.warn(`sam-segmenter: ignored messages from ${event.origin}: it is not in the server's SAM_EMBED_ORIGINS`);
    }
    return;
  }
  hostOrigin = event.origin;
  const reply = (answer) => event.source?.postMessage({ ...answer, id: message.id ?? null }, event.origin);
  const handler = requests[message.type];
  if (!handler) {
    reply({ type: "sam:error", code: "unknown_message", message: `Unknown message type "${message.type}"; see docs/embedding.md.` });
    return;
  }
  handling++;
  try {
    reply(await handler(message));
  } catch (error) {
    reply({ type: "sam:error", code: error.code || "failed", message: error.message || String(error) });
  } finally {
    handling--;
  }
});

// What the user does inside the frame (and ?image= loading) reaches the host unasked.
element.addEventListener("sam-mask", (event) => tellHost({ type: "sam:mask", ...event.detail, id: null }));
element.addEventListener("sam-objects-changed", (event) => handling || tellHost({ type: "sam:objects", ...event.detail, id: null }));
element.addEventListener("sam-ready", (event) => handling || tellHost({ type: "sam:ready", ...event.detail, id: null }));
element.addEventListener("sam-error", (event) => handling || tellHost({ type: "sam:error", ...event.detail, id: null }));

const image = new URLSearchParams(location.search).get("image");
if (image) element.open(image).catch(() => {}); // failures reach the host as sam:error
