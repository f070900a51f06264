// Starts a module Web Worker from a script of any origin (a page embedding the app loads it from the app's).

/**
 * A Worker must be same-origin with the page that starts it, so a script from another origin (the app's,
 * when its modules are embedded in another tool's page) is started from a same-origin blob: module that
 * imports it by absolute URL (a CORS request). The worker's modules then resolve their own imports and
 * files (onnxruntime-web, its .wasm) against the app's URL, and it runs with threads when the host page is
 * cross-origin isolated.
 * @param {URL|string} url the worker module
 * @returns {Worker}
 */
export function startModuleWorker(url) {
  const href = new URL(url, self.location.href).href;
  if (new URL(href).origin === self.location.origin) return new Worker(href, { type: "module" });
  const loader = URL.createObjectURL(new Blob([`import ${JSON.stringify(href)};\n`], { type: "text/javascript" }));
  const worker = new Worker(loader, { type: "module" });
  const release = () => URL.revokeObjectURL(loader);
  worker.addEventListener("message", release, { once: true });
  worker.addEventListener("error", release, { once: true });
  return worker;
}
