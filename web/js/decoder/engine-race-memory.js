// The engines' race remembered: with the engine left to the page (backend "auto") and WebGPU present, the worker
// times WebGPU against WASM and keeps the faster (decoder-worker.js). That costs a second session and timed
// decodes at every start, and when WASM wins, a second worker on the plain build (decoder-client.js). The
// winner is kept in localStorage per decoder file, onnxruntime-web version and browser (its user agent, which a
// browser update changes), for REMEMBER_MS; a later visit opens it at once. A remembered engine that no longer
// opens is forgotten, and the next start races again.

const KEY_PREFIX = "sam-web.engine-race:";
const REMEMBER_MS = 30 * 24 * 60 * 60 * 1000;
const ENGINES = ["wasm", "webgpu"];

/** localStorage, or null where the page may not use it (a sandboxed frame, storage turned off). */
function storage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

function keyOf(decoderSha256, ortVersion) {
  return `${KEY_PREFIX}${decoderSha256}:${ortVersion}:${globalThis.navigator?.userAgent ?? ""}`;
}

/**
 * The race's outcome on an earlier start of this decoder in this browser, or null.
 * @returns {{provider: "wasm"|"webgpu", engineMs: {webgpu: number, wasm: number}, at: number}|null}
 */
export function rememberedRace(decoderSha256, ortVersion, now = Date.now()) {
  const store = storage();
  if (!store || !decoderSha256 || !ortVersion) return null;
  try {
    const race = JSON.parse(store.getItem(keyOf(decoderSha256, ortVersion)));
    const timed = race?.engineMs;
    const valid = ENGINES.includes(race?.provider) && Number.isFinite(timed?.webgpu) && Number.isFinite(timed?.wasm) &&
      Number.isFinite(race.at) && race.at <= now && now - race.at < REMEMBER_MS;
    return valid ? { provider: race.provider, engineMs: { webgpu: timed.webgpu, wasm: timed.wasm }, at: race.at } : null;
  } catch {
    return null; // not JSON: as if nothing were kept
  }
}

/** Keeps a race's outcome ({provider, engineMs}) in place of any other kept one. */
export function rememberRace(decoderSha256, ortVersion, { provider, engineMs }, now = Date.now()) {
  const store = storage();
  if (!store || !decoderSha256 || !ortVersion) return;
  forgetRace();
  try {
    store.setItem(keyOf(decoderSha256, ortVersion), JSON.stringify({ provider, engineMs, at: now }));
  } catch {
    // storage full or refused: the next start races again
  }
}

/** Forgets every kept race (a remembered engine did not open, or another race is kept in its place). */
export function forgetRace() {
  const store = storage();
  if (!store) return;
  try {
    const keys = [];
    for (let i = 0; i < store.length; i++) {
      const key = store.key(i);
      if (key?.startsWith(KEY_PREFIX)) keys.push(key);
    }
    for (const key of keys) store.removeItem(key);
  } catch {
    // storage refused: nothing kept can be read either
  }
}
