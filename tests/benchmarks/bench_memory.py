"""
Memory of the web client in Chromium, Firefox and WebKit, against the real server (docs/webkit.md, "Memory").

    .venv/bin/python tests/benchmarks/bench_memory.py [--engines chromium,firefox,webkit] [--images 20]
        [--decodes 10] [--json out.json]
    .venv/bin/python tests/benchmarks/bench_memory.py --stages [--engines ...]

Starts `python -m backend serve` on the seeded random vit_t (fp32, its default decoder), then for each engine
starts a fresh browser as a user would run it, with a profile on disk (Debian chromium over the DevTools
protocol, not Playwright: see browser_memory.ChromiumEngine; firefox-esr over WebDriver BiDi; WebKitGTK through
WebKitWebDriver on a private Xvfb) and measures the proportional set size (PSS: shared pages split between
the processes that map them) of all the browser's processes, sampled every 100 ms:

- empty: the browser on a bare page of the app's origin (/healthz);
- peak: the highest sample from opening the app to the end of `--decodes` hover decodes on an 800x600 photo
  (page, decoder worker, onnxruntime's thread workers, GPU and network processes: everything the tab costs);
- first / last: after the first of `--images` photos opened one after another (each hovered once), and after
  the last (each the lowest sample of the 10 s that follow, so a pending collection is not counted as held).
  Also by kind of process (Chromium's renderer, GPU, network service...), for finding where memory goes.

--stages instead measures what the decoder's start costs before any photo, each step in a fresh browser on the
empty page, in a worker like the app's decoder worker (onnxruntime-web's WASM build, one thread): the glue
imported; its WebAssembly module compiled alone (kept, as a session keeps it); the default decoder's session
created with the app's options (which compiles the module itself). The full flow above also prints the level
once the app's decoder is ready (session created and warmed up), before the first photo.

Bounds (issue #26, what a phone can afford): peak - empty <= 300 MB and last - first <= 50 MB. Also printed:
the decoder's WebAssembly memory after the decodes (its own figure, from the app's "sam:decode" entries) and,
in Chromium, `performance.measureUserAgentSpecificMemory()` (JS heaps + WASM of the page and its workers).
Prints one JSON line per engine; exits 1 if an engine breaks a bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "tests" / "browser")]
sys.path.insert(3, str(REPO_ROOT / "tests" / "webkit"))

from browser_memory import (  # noqa: E402 (after the path)
    HOVER_JS,
    HOVER_SPOTS,
    MB,
    OPEN_IMAGE_JS,
    WAIT_S,
    ChromiumEngine,
    PeakSampler,
    difference,
    js,
    lowest,
    megabytes,
    wrapped,
)

PEAK_BOUND_MB = 300
GROWTH_BOUND_MB = 50
SETTLE_S = 10


# ---------------------------------------------------------------------------------------------- engines
# ChromiumEngine (browser_memory.py) and these two: `run(body)` runs `body` (an async JS function body that
# returns something JSON-serializable) in the page and returns its value, so the flow below is the same everywhere.


class WebKitEngine:
    name = "webkit"

    def __init__(self, display: str | None = None, driver=None) -> None:
        from webkit_helpers import launch_webkit

        self._driver = driver or launch_webkit(display)

    def goto(self, url: str) -> None:
        self._driver.get(url)

    def run(self, body: str):
        script = (
            f"const done = arguments[0]; {wrapped(body)}.then(done, (e) => done(JSON.stringify({{error: String(e)}})));"
        )
        return json.loads(self._driver.execute_async_script(script))

    def close(self) -> None:
        self._driver.quit()


class FirefoxEngine:
    """Debian's firefox-esr, headless, over WebDriver BiDi with a plain WebSocket (no geckodriver here)."""

    name = "firefox"

    def __init__(self) -> None:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="sam-bench-firefox-")
        # The empty page (/healthz) shows as plain text, as in the other engines: Firefox's JSON viewer would
        # make it a page of its own kind, where a page's worker does not start.
        Path(self._profile, "user.js").write_text(
            'user_pref("devtools.jsonview.enabled", false);\n'
            'user_pref("browser.shell.checkDefaultBrowser", false);\n'
            'user_pref("datareporting.policy.dataSubmissionEnabled", false);\n'
            'user_pref("browser.startup.homepage_override.mstone", "ignore");\n'
        )
        self._process = subprocess.Popen(
            [
                os.environ.get("FIREFOX", "/usr/bin/firefox-esr"),
                "--headless",
                "--no-remote",
                "--profile",
                self._profile,
                "--remote-debugging-port",
                "0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        address = None
        for line in self._process.stderr:
            if "WebDriver BiDi listening on " in line:
                address = line.split("listening on ", 1)[1].strip()
                break
        if not address:
            raise RuntimeError("Firefox did not start its WebDriver BiDi server")
        threading.Thread(target=lambda: [None for _ in self._process.stderr], daemon=True).start()
        self._socket = websocket.create_connection(address + "/session", timeout=WAIT_S, suppress_origin=True)
        self._next_id = 0
        self._command("session.new", {"capabilities": {}})
        self._context = self._command("browsingContext.getTree", {})["contexts"][0]["context"]
        self._command(
            "browsingContext.setViewport", {"context": self._context, "viewport": {"width": 1280, "height": 900}}
        )

    def _command(self, method: str, params: dict) -> dict:
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                if message.get("type") == "error":
                    raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    def goto(self, url: str) -> None:
        self._command("browsingContext.navigate", {"context": self._context, "url": url, "wait": "complete"})

    def run(self, body: str):
        result = self._command(
            "script.evaluate",
            {"expression": wrapped(body), "awaitPromise": True, "target": {"context": self._context}},
        )
        if result.get("type") == "exception":
            raise RuntimeError(result["exceptionDetails"].get("text"))
        return json.loads(result["result"]["value"])

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may close before the answer
            self._command("browser.close", {})
        self._socket.close()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _collect_garbage(engine) -> None:
    """Where the driver can (Chromium), a full collection before a level is read: what is left is what the app
    holds, not what the collector has not looked at yet (JavaScriptCore and SpiderMonkey get the 10 s)."""
    if hasattr(engine, "collect_garbage"):
        engine.collect_garbage()


def measure(engine, app_url: str, excluded_roots: tuple[int, ...], images: int = 20, decodes: int = 10) -> dict:
    """The figures of one engine (MB): empty, peak, first, last and the bounds' verdicts."""
    # The empty page is a bare page of the app's origin with its isolation headers (/healthz's JSON): the app
    # then loads into the same process, as it would from a bookmark (an isolated page gets a process of its
    # own, and leaving about:blank would count that page's process twice).
    engine.goto(app_url + "healthz")
    time.sleep(3)  # the browser's start-up (its first page's process leaving, caches filling) is over
    empty = lowest(excluded_roots, 2)
    with PeakSampler(excluded_roots) as sampler:
        sampler.peak = 0
        engine.goto(app_url + "?backend=wasm")
        engine.run(js("await until(() => ['ready', 'error'].includes(document.body.dataset.decoder), 'the decoder');"))
        runs_on = engine.run("return document.getElementById('fact-provider').textContent")
        ready = lowest(excluded_roots, 3)
        engine.run(js(OPEN_IMAGE_JS, 0))
        wasm_bytes = None
        for spot in HOVER_SPOTS[:decodes]:
            wasm_bytes = engine.run(js(HOVER_JS, *spot))
        peak = sampler.peak
        js_memory = None
        if engine.name == "chromium":
            js_memory = engine.run("return (await performance.measureUserAgentSpecificMemory()).bytes")
        _collect_garbage(engine)
        first = lowest(excluded_roots, SETTLE_S)
        for seed in range(1, images):
            engine.run(js(OPEN_IMAGE_JS, seed))
            engine.run(js(HOVER_JS, *HOVER_SPOTS[seed % len(HOVER_SPOTS)]))
        _collect_garbage(engine)
        last = lowest(excluded_roots, SETTLE_S)
    figures = {
        "engine": engine.name,
        "runs_on": runs_on,
        "empty_mb": megabytes(empty),
        "peak_above_empty_mb": round((peak - sum(empty.values())) / MB),
        "decoder_ready_above_empty_mb": round((sum(ready.values()) - sum(empty.values())) / MB),
        "first_image_mb": megabytes(first),
        "after_images_mb": megabytes(last),
        "growth_mb": round((sum(last.values()) - sum(first.values())) / MB),
        "peak_by_process_mb": difference(sampler.peak_by_kind, empty),
        "first_by_process_mb": difference(first, empty),
        "growth_by_process_mb": difference(last, first),
        "images": images,
        "decoder_wasm_mb": None if wasm_bytes is None else round(wasm_bytes / MB, 1),
        "chromium_js_and_wasm_mb": None if js_memory is None else round(js_memory / MB),
    }
    figures["within_bounds"] = (
        figures["peak_above_empty_mb"] <= PEAK_BOUND_MB and figures["growth_mb"] <= GROWTH_BOUND_MB
    )
    return figures


# The steps of the decoder's start, run one after the other by a worker of the app's origin (from a blob URL: the
# app serves no page for it).
STAGE_WORKER_JS = """
const ORT_DIR = '%(app)svendor/ort/';
let ort = null;
const kept = [];
onmessage = async ({ data: step }) => {
  try {
    if (step === 'import') {
      ort = await import(ORT_DIR + 'ort.wasm.min.mjs');
      Object.assign(ort.env.wasm, { wasmPaths: ORT_DIR, numThreads: 1, proxy: false });
    } else if (step === 'compile') {
      kept.push(await WebAssembly.compileStreaming(fetch(ORT_DIR + 'ort-wasm-simd-threaded.wasm')));
    } else if (step === 'session') {
      const info = await (await fetch('%(app)sapi/model')).json();
      const url = info.decoders.find((d) => d.name === info.default_decoder).url;
      const model = new Uint8Array(await (await fetch(new URL(url, '%(app)s'))).arrayBuffer());
      const { decoderSessionOptions } = await import('%(app)sjs/decoder/session-options.js');
      kept.push(await ort.InferenceSession.create(model, decoderSessionOptions('wasm')));
    }
    postMessage('done');
  } catch (error) {
    postMessage(`${step} failed: ${error}`);
  }
};
"""

STAGE_JS = """
const worker = window.stageWorker ??= new Worker(URL.createObjectURL(new Blob([%s], {type: 'text/javascript'})));
return await new Promise((resolve) => {
  worker.onmessage = ({ data }) => resolve(data);
  worker.onerror = (event) => resolve(`the worker failed: ${event.message || 'it did not load'}`);
  worker.postMessage(%s);
});
"""

# Each list runs in a fresh browser: the module compiled alone, and the session (which compiles it itself).
STAGE_RUNS = (("import", "compile"), ("import", "session"))


def stages(engine_name: str, app_url: str, excluded_roots: tuple[int, ...]) -> dict:
    """MB above the empty page after each step of the decoder's start (the lowest sample of the 3 s after it)."""
    figures = {"engine": engine_name}
    source = json.dumps(STAGE_WORKER_JS % {"app": app_url})
    for steps in STAGE_RUNS:
        with _engine(engine_name) as engine:
            engine.goto(app_url + "healthz")
            time.sleep(3)
            empty = sum(lowest(excluded_roots, 2).values())
            for step in steps:
                answer = engine.run(STAGE_JS % (source, json.dumps(step)))
                if answer != "done":
                    raise RuntimeError(f"{engine_name}: {answer}")
                figures[step] = round((sum(lowest(excluded_roots, 3).values()) - empty) / MB)
    return figures


@contextmanager
def _engine(name: str):
    if name == "webkit":
        from webkit_helpers import xvfb_display

        with xvfb_display() as display:
            engine = WebKitEngine(display)
            try:
                yield engine
            finally:
                engine.close()
        return
    engine = ChromiumEngine() if name == "chromium" else FirefoxEngine()
    try:
        yield engine
    finally:
        engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--engines", default="chromium,firefox,webkit")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--decodes", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--stages", action="store_true", help="the decoder's start step by step (no photos)")
    args = parser.parse_args()

    from backend_fixtures import vit_t_checkpoint
    from browser_helpers import LiveServer

    server = LiveServer(vit_t_checkpoint(), Path(tempfile.mkdtemp(prefix="sam-bench-memory-")))
    results = []
    try:
        for name in args.engines.split(","):
            if args.stages:
                results.append(stages(name, server.url, (server.process.pid,)))
                print(json.dumps(results[-1]), flush=True)
                continue
            with _engine(name) as engine:
                figures = measure(engine, server.url, (server.process.pid,), args.images, args.decodes)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.stages:
        return 0
    return 0 if all(r["within_bounds"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
