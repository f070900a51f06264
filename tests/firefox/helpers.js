// Helpers of the Firefox suite: the real server, Firefox over BiDi, the torch oracle, reading what the page shows.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import puppeteer from "puppeteer-core";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";
const SERVER_START_TIMEOUT_MS = 300_000;
export const WAIT_MS = 90_000;
// node:test options of a test and of a suite's start-up. Bounds that catch a hang, not a slow machine: on an
// idle 2-core machine a test takes 5-15 s, on one loaded 14 times over (load average 28) up to 75 s, and the
// start-up up to 100 s.
export const OPTIONS = { timeout: 180_000 };
export const START_UP = { timeout: 360_000 };

/** The project's Python: SAM_PYTHON (the Makefile passes its venv's), else the repo's .venv, else python3. */
export function python() {
  if (process.env.SAM_PYTHON) return process.env.SAM_PYTHON;
  const venv = path.join(REPO_ROOT, ".venv", "bin", "python");
  return fs.existsSync(venv) ? venv : "python3";
}

/** Python children import this checkout's `backend`, whatever the venv's editable install points at. */
function pythonEnv(extra = {}) {
  const pythonPath = [REPO_ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter);
  return { ...process.env, PYTHONPATH: pythonPath, ...extra };
}

const madeDirs = [];

/** A fresh temporary folder, removed when the suite's process exits. */
export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  madeDirs.push(dir);
  return dir;
}

process.on("exit", () => {
  for (const dir of madeDirs) fs.rmSync(dir, { recursive: true, force: true });
});

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` (async, truthy when done) every `everyMs` until `timeoutMs`; throws `what` on timeout. */
export async function waitUntil(check, what, timeoutMs = WAIT_MS, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/**
 * A second origin for pages that embed the app: serves `routes` ({path: {body, type, headers}}) on its own
 * loopback port; resolves with {url, origin, stop}.
 */
export async function startHost(routes) {
  const server = http.createServer((request, response) => {
    const route = routes[new URL(request.url, "http://host").pathname];
    if (!route) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "Content-Type": route.type, "Cache-Control": "no-store", ...route.headers });
    response.end(route.body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}/`;
  return { url, origin: url.slice(0, -1), stop: () => new Promise((resolve) => server.close(resolve)) };
}

/**
 * `python -m backend serve` on a free loopback port with a fresh data dir: no checkpoint and no downloads, so
 * it runs on the seeded random vit_t weights (the ones predictor_oracle.py builds), fp32, on the CPU.
 */
export async function startServer(extraEnv = {}) {
  const dataDir = tempDir("sam-firefox-data-");
  const port = await freePort();
  const logPath = path.join(dataDir, "server.log");
  const log = fs.openSync(logPath, "w");
  const child = spawn(python(), ["-m", "backend", "serve", "--host", "127.0.0.1", "--port", String(port)], {
    cwd: REPO_ROOT,
    env: pythonEnv({
      SAM_MODEL_TYPE: "vit_t",
      SAM_DATA_DIR: dataDir,
      SAM_ALLOW_DOWNLOAD: "0",
      SAM_PRECISION: "fp32",
      SAM_DEVICE: "cpu",
      SAM_LOG_LEVEL: "WARNING",
      ...extraEnv,
    }),
    stdio: ["ignore", log, log],
  });
  const url = `http://127.0.0.1:${port}/`;
  const logTail = () => fs.readFileSync(logPath, "utf8").slice(-3000);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  /** Ends the server and waits for it (SIGKILL after 10 s), so its data dir can be removed. */
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    fs.closeSync(log);
  };
  try {
    await waitUntil(
      async () => {
        if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode}):\n${logTail()}`);
        try {
          return (await fetch(url + "healthz", { signal: AbortSignal.timeout(2000) })).ok;
        } catch {
          return false;
        }
      },
      `the server at ${url}`,
      SERVER_START_TIMEOUT_MS,
      500,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, dataDir, stop, logTail };
}

/**
 * startServer(`serverEnv`) and launchFirefox() side by side; resolves with {server, browser}. If either fails,
 * the other is stopped and the failure thrown.
 */
export async function startServerAndFirefox(serverEnv = {}) {
  const [server, browser] = await Promise.allSettled([startServer(serverEnv), launchFirefox()]);
  const failed = [server, browser].find((s) => s.status === "rejected");
  if (failed) {
    if (server.status === "fulfilled") await server.value.stop();
    if (browser.status === "fulfilled") await browser.value.close();
    throw failed.reason;
  }
  return { server: server.value, browser: browser.value };
}

/** Saves the server's gallery image `name` in a fresh temporary folder (`prefix`); resolves with its path. */
export async function gallerySample(server, name, prefix) {
  const file = path.join(tempDir(prefix), name);
  const answer = await fetch(new URL(`gallery/${name}`, server.url));
  assert.equal(answer.status, 200, `the server's gallery has no ${name}`);
  fs.writeFileSync(file, Buffer.from(await answer.arrayBuffer()));
  return file;
}

/** Runs a Python script of this folder with the project's Python; rejects with its stderr if it fails. */
export async function runPython(script, args = []) {
  const child = spawn(python(), [path.join(REPO_ROOT, "tests", "firefox", script), ...args], {
    cwd: REPO_ROOT,
    env: pythonEnv(),
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr = (stderr + chunk).slice(-3000)));
  const code = await new Promise((resolve, reject) => child.once("error", reject).once("exit", resolve));
  if (code !== 0) throw new Error(`${script} exited (${code}):\n${stderr}`);
}

/**
 * predictor_oracle.py as a child: `ask(request)` resolves with its answer (see that file for the fields).
 * `args`: the oracle's arguments, e.g. ["sam2.1_hiera_t"] for the server's seeded random SAM 2.1.
 */
export async function startOracle(args = []) {
  const child = spawn(python(), [path.join(REPO_ROOT, "tests", "firefox", "predictor_oracle.py"), ...args], {
    cwd: REPO_ROOT,
    env: pythonEnv(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr = (stderr + chunk).slice(-3000)));
  const lines = readline.createInterface({ input: child.stdout });
  const waiting = [];
  const exited = new Promise((resolve) => child.once("exit", resolve));
  lines.on("line", (line) => waiting.shift()?.resolve(line));
  exited.then((code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`the torch oracle exited (${code}):\n${stderr}`));
  });
  const nextLine = () => new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  const ready = await nextLine().catch((error) => error.message);
  if (ready !== "ready") {
    child.kill("SIGTERM");
    throw new Error(`the torch oracle did not start: ${ready}\n${stderr}`);
  }
  return {
    async ask(request) {
      const answer = nextLine();
      child.stdin.write(JSON.stringify(request) + "\n");
      const parsed = JSON.parse(await answer);
      if (parsed.error) throw new Error(`torch oracle: ${parsed.error}`);
      return parsed;
    },
    stop() {
      child.stdin.end();
      if (child.exitCode === null) child.kill("SIGTERM");
    },
  };
}

/** Headless Debian Firefox ESR over WebDriver BiDi (puppeteer-core; no geckodriver, no browser download). */
export async function launchFirefox() {
  if (!fs.existsSync(FIREFOX)) {
    throw new Error(`Firefox not found at ${FIREFOX}: install Debian's firefox-esr (make firefox)`);
  }
  return puppeteer.launch({
    browser: "firefox",
    protocol: "webDriverBiDi",
    executablePath: FIREFOX,
    headless: true,
    timeout: WAIT_MS,
  });
}

/**
 * A fresh browser context (its own storage and download folder) with one desktop-sized page. Console errors
 * and uncaught exceptions are collected in `errors`; `close()` ends the context.
 */
export async function openPage(browser) {
  const downloads = tempDir("sam-firefox-downloads-");
  const downloadBehavior = { policy: "allow", downloadPath: downloads }; // BiDi browser.setDownloadBehavior
  const context = await browser.createBrowserContext({ downloadBehavior });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.setViewport({ width: 1280, height: 900 });
  const errors = [];
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  page.on("pageerror", (error) => errors.push(`uncaught: ${error.message ?? error}`));
  return { page, downloads, errors, close: () => context.close() };
}

/** Runs `body(session)` on a fresh page of `browser` (openPage); the test fails on any console error it logged. */
export async function withFirefoxPage(browser, body) {
  const session = await openPage(browser);
  try {
    await body(session);
  } finally {
    await session.close();
  }
  assert.deepEqual(session.errors, [], "console errors in Firefox");
}

// ---------------------------------------------------------------------------------------------- the page

/** Loads the app and waits until the decoder is ready. */
export async function openApp(page, server, query = "backend=wasm") {
  await page.goto(server.url + (query ? `?${query}` : ""));
  await page.waitForFunction("['ready', 'error'].includes(document.body.dataset.decoder)");
  const state = await page.evaluate(() => document.body.dataset.decoder);
  if (state !== "ready") throw new Error(`the decoder failed: ${await text(page, "#error-text")}`);
}

/** Chooses a file with the page's file picker and waits until its embedding is in the worker. */
export async function upload(page, filePath) {
  const input = await page.$("#file-input");
  await input.uploadFile(filePath);
  await page.waitForFunction("['ready', 'error'].includes(document.body.dataset.image)");
  const state = await page.evaluate(() => document.body.dataset.image);
  if (state !== "ready") throw new Error(`the image did not open: ${await text(page, "#error-text")}`);
}

export async function text(page, selector) {
  return page.$eval(selector, (element) => element.textContent);
}

/** Waits until every committed prompt has been decoded and painted. */
export async function waitIdle(page) {
  await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 50)));
  await page.waitForFunction("!document.body.dataset.pending || document.body.dataset.pending === '0'");
}

/** The mask overlay as the user sees it: {size: [H, W], bits: base64 of H*W bytes, 1 where painted, painted}. */
export async function shownMask(page) {
  return page.evaluate(() => {
    const canvas = document.getElementById("mask-canvas");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const bits = new Uint8Array(canvas.width * canvas.height);
    let painted = 0;
    for (let i = 0; i < bits.length; i++) painted += bits[i] = data[i * 4 + 3] > 0 ? 1 : 0;
    let binary = "";
    for (let i = 0; i < bits.length; i += 8192) binary += String.fromCharCode(...bits.subarray(i, i + 8192));
    return { size: [canvas.height, canvas.width], bits: btoa(binary), painted };
  });
}

/** Waits until the overlay has some painted pixel (or, with `painted` false, none). */
export async function waitForOverlay(page, painted = true) {
  await page.waitForFunction(
    (wanted) => {
      const canvas = document.getElementById("mask-canvas");
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < data.length; i += 4) if (data[i]) return wanted;
      return !wanted;
    },
    {},
    painted,
  );
}

/**
 * Whole viewport coordinates that Firefox maps to image pixel (x, y) (scrolling the image into view).
 * Puppeteer's BiDi input sends whole CSS pixels, and Firefox may report them to the page shifted by the
 * fraction at which the scrolled layout sits (651 arrives as clientY 651.2): so the point is aimed, then
 * checked with a pointer move, read back the way the app reads it (stage-view.js) and corrected.
 */
export async function canvasPoint(page, x, y) {
  await watchPointer(page);
  const [box, width, height] = await page.$eval("#mask-canvas", (canvas) => {
    canvas.scrollIntoView({ block: "center" });
    const r = canvas.getBoundingClientRect();
    return [{ x: r.x, y: r.y, width: r.width, height: r.height }, canvas.width, canvas.height];
  });
  const [stepX, stepY] = [box.width / width, box.height / height];
  let point = [Math.round(box.x + (x + 0.5) * stepX), Math.round(box.y + (y + 0.5) * stepY)];
  for (let attempt = 0; attempt < 3; attempt++) {
    // From 3 px aside, so this move is one (a pointer already there gets no event) that can be told from the
    // aside one (which Chromium may still deliver late: it dispatches pointer moves with the next frame).
    await page.mouse.move(point[0] - 3, point[1]);
    await page.mouse.move(...point);
    const arrived = await page
      .waitForFunction(
        ([px, py]) => {
          const last = window.lastPointer;
          return last && Math.abs(last.clientX - px) < 1 && Math.abs(last.clientY - py) < 1 && last.pixel;
        },
        { timeout: 10_000 },
        point,
      )
      .catch(() => null);
    if (!arrived) throw new Error(`the pointer at ${point} is not over the image`);
    const landed = await arrived.jsonValue();
    if (landed[0] === x && landed[1] === y) return point;
    const nudge = (miss, step) => Math.sign(miss) * Math.max(Math.abs(miss) && 1, Math.round(Math.abs(miss) * step));
    point = [point[0] + nudge(x - landed[0], stepX), point[1] + nudge(y - landed[1], stepY)];
  }
  throw new Error(`no whole viewport point lands on image pixel (${x}, ${y}) (shown at ${stepX} CSS px per pixel)`);
}

/** Records the last pointer move over the mask canvas and its image pixel (read by canvasPoint). */
async function watchPointer(page) {
  await page.evaluate(() => {
    if (window.lastPointer !== undefined) return;
    window.lastPointer = null;
    const canvas = document.getElementById("mask-canvas");
    canvas.addEventListener("pointermove", (event) => {
      const b = canvas.getBoundingClientRect();
      const pixel = [
        Math.floor(((event.clientX - b.left) / b.width) * canvas.width),
        Math.floor(((event.clientY - b.top) / b.height) * canvas.height),
      ];
      window.lastPointer = { clientX: event.clientX, clientY: event.clientY, pixel };
    });
    canvas.addEventListener("pointerleave", () => (window.lastPointer = null));
  });
}

/** [x, y, label] of the point markers drawn on the image. */
export async function promptPoints(page) {
  return page.$$eval("#prompt-layer circle", (circles) =>
    circles.map((c) => [
      Number(c.getAttribute("cx")) - 0.5,
      Number(c.getAttribute("cy")) - 0.5,
      c.classList.contains("positive") ? 1 : 0,
    ]),
  );
}

export async function clickPixel(page, x, y, options = {}) {
  const [px, py] = await canvasPoint(page, x, y);
  await page.mouse.click(px, py, options);
  await waitIdle(page);
}

/** Moves the pointer off the image so no hover preview is drawn. */
export async function leaveImage(page) {
  await page.mouse.move(2, 2);
}

/**
 * Clicks `selector` and waits for the file it downloads to be complete in `folder`; resolves with {name,
 * bytes}. Firefox creates the file under its own name, empty, before it writes the `.part` file it renames
 * over it at the end; so a download counts as done when no `.part` file is left and the new file is not empty
 * and has kept its size for one more poll (no export is an empty file).
 */
export async function download(page, folder, selector) {
  const before = new Set(fs.readdirSync(folder));
  await page.click(selector);
  let seen = null; // {name, size} at the previous poll
  const name = await waitUntil(() => {
    const names = fs.readdirSync(folder);
    const name = names.find((n) => !before.has(n) && !n.endsWith(".part"));
    if (!name || names.some((n) => n.endsWith(".part"))) return null;
    let size;
    try {
      size = fs.statSync(path.join(folder, name)).size;
    } catch {
      return null; // renamed between the listing and now
    }
    const settled = size > 0 && seen?.name === name && seen.size === size;
    seen = { name, size };
    return settled ? name : null;
  }, `the download of ${selector}`);
  return { name, bytes: fs.readFileSync(path.join(folder, name)) };
}

/**
 * A downloaded PNG decoded by the page: {size: [H, W], white, opaque}, base64 bits (as shownMask) of the
 * pixels whose red channel is above 127 and of those with any alpha.
 */
export async function pngBits(page, bytes) {
  return page.evaluate(async (base64) => {
    const binary = atob(base64);
    const buffer = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) buffer[i] = binary.charCodeAt(i);
    const bitmap = await createImageBitmap(new Blob([buffer], { type: "image/png" }));
    const context = new OffscreenCanvas(bitmap.width, bitmap.height).getContext("2d");
    context.drawImage(bitmap, 0, 0);
    const data = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const white = new Uint8Array(bitmap.width * bitmap.height);
    const opaque = new Uint8Array(white.length);
    for (let i = 0; i < white.length; i++) {
      white[i] = data[i * 4] > 127 ? 1 : 0;
      opaque[i] = data[i * 4 + 3] > 0 ? 1 : 0;
    }
    const encode = (bits) => {
      let text = "";
      for (let i = 0; i < bits.length; i += 8192) text += String.fromCharCode(...bits.subarray(i, i + 8192));
      return btoa(text);
    };
    return { size: [bitmap.height, bitmap.width], white: encode(white), opaque: encode(opaque) };
  }, Buffer.from(bytes).toString("base64"));
}

/** Base64 bits of a [H, W] mask cropped to rows y0..y0+h and columns x0..x0+w. */
export function cropBits({ size, bits }, [x0, y0, w, h]) {
  const full = Buffer.from(bits, "base64");
  const out = Buffer.alloc(w * h);
  for (let y = 0; y < h; y++) full.copy(out, y * w, (y0 + y) * size[1] + x0, (y0 + y) * size[1] + x0 + w);
  return out.toString("base64");
}
