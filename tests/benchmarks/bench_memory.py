"""
Memory of the web client in Chromium, Firefox and WebKit, against the real server (docs/webkit.md, "Memory").

    .venv/bin/python tests/benchmarks/bench_memory.py [--engines chromium,firefox,webkit] [--images 20]
        [--decodes 10] [--json out.json]

Starts `python -m backend serve` on the seeded random vit_t (fp32, its default decoder), then for each engine
starts a fresh browser (Debian chromium through Playwright, firefox-esr over WebDriver BiDi, WebKitGTK through
WebKitWebDriver on a private Xvfb) and measures the proportional set size (PSS: shared pages split between
the processes that map them) of all the browser's processes, sampled every 100 ms:

- empty: the browser on a bare page of the app's origin (/healthz);
- peak: the highest sample from opening the app to the end of `--decodes` hover decodes on an 800x600 photo
  (page, decoder worker, onnxruntime's thread workers, GPU and network processes: everything the tab costs);
- first / last: after the first of `--images` photos opened one after another (each hovered once), and after
  the last (the lowest sample of the 10 s that follow it, so a pending collection is not counted as growth).

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

MB = 1_000_000
PEAK_BOUND_MB = 300
GROWTH_BOUND_MB = 50
SETTLE_S = 10
WAIT_S = 120
# Processes in this one's tree that are not the browser: the drivers (Playwright's node is "node-MainThread")
# and the display.
NOT_BROWSER = ("node", "Xvfb", "WebKitWebDriver", "python")

# ---------------------------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(root: int, children: dict[int, list[int]]) -> set[int]:
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def browser_pss(excluded_roots: tuple[int, ...] = ()) -> int:
    """PSS in bytes of every process below this one except the servers' trees and the drivers/display."""
    children = _children()
    excluded = set().union(*(_tree(root, children) for root in excluded_roots)) if excluded_roots else set()
    pids = _tree(os.getpid(), children) - excluded - {os.getpid()}
    return sum(_pss_bytes(pid) for pid in pids if not _name(pid).startswith(NOT_BROWSER))


class PeakSampler:
    """Samples browser_pss every 100 ms in a thread: `peak` and `low` (the lowest since reset_low)."""

    def __init__(self, excluded_roots: tuple[int, ...]) -> None:
        self.excluded_roots = excluded_roots
        self.peak = 0
        self.low = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = browser_pss(self.excluded_roots)
            self.peak = max(self.peak, value)
            self.low = value if self.low is None else min(self.low, value)
            self._stop.wait(0.1)

    def reset_low(self) -> None:
        self.low = None

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------- engines
# Each engine is driven through one call: `run(body)` runs `body` (an async JS function body that returns
# something JSON-serializable) in the page and returns its value, so the flow below is the same everywhere.


def _wrapped(body: str) -> str:
    return f"(async () => JSON.stringify((await (async () => {{ {body} }})()) ?? null))()"


class ChromiumEngine:
    name = "chromium"

    def __init__(self) -> None:
        from browser_helpers import CHROMIUM, CHROMIUM_ARGS
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        # Eager measurement: measureUserAgentSpecificMemory answers at once instead of at the next collection.
        args = [
            *CHROMIUM_ARGS,
            "--enable-blink-features=ForceEagerMeasureMemory",
            "--disable-features=BackForwardCache",
        ]
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        self._page = self._browser.new_page(viewport={"width": 1280, "height": 900})
        self._page.set_default_timeout(WAIT_S * 1000)

    def goto(self, url: str) -> None:
        self._page.goto(url)

    def run(self, body: str):
        return json.loads(self._page.evaluate(_wrapped(body)))

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()


class WebKitEngine:
    name = "webkit"

    def __init__(self, display: str | None = None, driver=None) -> None:
        from webkit_helpers import launch_webkit

        self._driver = driver or launch_webkit(display)

    def goto(self, url: str) -> None:
        self._driver.get(url)

    def run(self, body: str):
        script = f"const done = arguments[0]; {_wrapped(body)}.then(done, (e) => done(JSON.stringify({{error: String(e)}})));"
        return json.loads(self._driver.execute_async_script(script))

    def close(self) -> None:
        self._driver.quit()


class FirefoxEngine:
    """Debian's firefox-esr, headless, over WebDriver BiDi with a plain WebSocket (no geckodriver here)."""

    name = "firefox"

    def __init__(self) -> None:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="sam-bench-firefox-")
        Path(self._profile, "user.js").write_text(
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
            {"expression": _wrapped(body), "awaitPromise": True, "target": {"context": self._context}},
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


# ---------------------------------------------------------------------------------------------- the flow

WAIT_JS = """const until = async (check, what) => {{
  const deadline = performance.now() + {timeout_ms};
  while (!check()) {{ if (performance.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 50)); }} }};"""

# A photo made in the page (a different one for each seed) chosen with the file picker, as a user would.
OPEN_IMAGE_JS = """
const seed = %d;
const canvas = new OffscreenCanvas(800, 600);
const context = canvas.getContext('2d');
for (let i = 0; i < 40; i++) {
  const r = (k) => Math.abs(Math.sin(seed * 97.13 + i * 13.7 + k)) ;
  context.fillStyle = `rgb(${255 * r(1) | 0}, ${255 * r(2) | 0}, ${255 * r(3) | 0})`;
  context.fillRect(r(4) * 700, r(5) * 500, 40 + r(6) * 300, 40 + r(7) * 250);
}
const blob = await canvas.convertToBlob({type: 'image/png'});
const transfer = new DataTransfer();
transfer.items.add(new File([blob], `photo-${seed}.png`, {type: 'image/png'}));
const input = document.getElementById('file-input');
delete document.body.dataset.image;
input.files = transfer.files;
input.dispatchEvent(new Event('change', {bubbles: true}));
await until(() => ['ready', 'error'].includes(document.body.dataset.image), 'the image');
if (document.body.dataset.image !== 'ready') throw new Error(document.getElementById('error-text').textContent);
"""

# One hover decode at a pixel: a mouse pointermove on the overlay, then the worker's answer.
HOVER_JS = """
const canvas = document.getElementById('mask-canvas');
const before = performance.getEntriesByName('sam:decode').length;
const r = canvas.getBoundingClientRect();
canvas.dispatchEvent(new PointerEvent('pointermove', {bubbles: true, pointerType: 'mouse', pointerId: 1,
  clientX: r.left + r.width * %f, clientY: r.top + r.height * %f}));
await until(() => performance.getEntriesByName('sam:decode').length > before, 'a decode');
return performance.getEntriesByName('sam:decode').at(-1).detail?.wasmMemoryBytes ?? null;
"""

HOVER_SPOTS = [(0.2 + 0.6 * ((i * 37) % 10) / 10, 0.2 + 0.6 * ((i * 53) % 10) / 10) for i in range(40)]


def _js(template: str, *values) -> str:
    return WAIT_JS.format(timeout_ms=WAIT_S * 1000) + (template % values if values else template)


def measure(engine, app_url: str, excluded_roots: tuple[int, ...], images: int = 20, decodes: int = 10) -> dict:
    """The figures of one engine (MB): empty, peak, first, last and the bounds' verdicts."""
    # The empty page is a bare page of the app's origin with its isolation headers (/healthz's JSON): the app
    # then loads into the same process, as it would from a bookmark (an isolated page gets a process of its
    # own, and leaving about:blank would count that page's process twice).
    engine.goto(app_url + "healthz")
    time.sleep(2)
    empty = min(browser_pss(excluded_roots) for _ in range(5))
    with PeakSampler(excluded_roots) as sampler:
        sampler.peak = 0
        engine.goto(app_url + "?backend=wasm")
        engine.run(_js("await until(() => ['ready', 'error'].includes(document.body.dataset.decoder), 'the decoder');"))
        runs_on = engine.run("return document.getElementById('fact-provider').textContent")
        engine.run(_js(OPEN_IMAGE_JS, 0))
        wasm_bytes = None
        for spot in HOVER_SPOTS[:decodes]:
            wasm_bytes = engine.run(_js(HOVER_JS, *spot))
        peak = sampler.peak
        js_memory = None
        if engine.name == "chromium":
            js_memory = engine.run("return (await performance.measureUserAgentSpecificMemory()).bytes")
        time.sleep(1)
        first = browser_pss(excluded_roots)
        for seed in range(1, images):
            engine.run(_js(OPEN_IMAGE_JS, seed))
            engine.run(_js(HOVER_JS, *HOVER_SPOTS[seed % len(HOVER_SPOTS)]))
        sampler.reset_low()
        time.sleep(SETTLE_S)
        last = sampler.low
    figures = {
        "engine": engine.name,
        "runs_on": runs_on,
        "empty_mb": round(empty / MB),
        "peak_above_empty_mb": round((peak - empty) / MB),
        "first_image_mb": round(first / MB),
        "after_images_mb": round(last / MB),
        "growth_mb": round((last - first) / MB),
        "images": images,
        "decoder_wasm_mb": None if wasm_bytes is None else round(wasm_bytes / MB, 1),
        "chromium_js_and_wasm_mb": None if js_memory is None else round(js_memory / MB),
    }
    figures["within_bounds"] = (
        figures["peak_above_empty_mb"] <= PEAK_BOUND_MB and figures["growth_mb"] <= GROWTH_BOUND_MB
    )
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
    args = parser.parse_args()

    from backend_fixtures import vit_t_checkpoint
    from browser_helpers import LiveServer

    server = LiveServer(vit_t_checkpoint(), Path(tempfile.mkdtemp(prefix="sam-bench-memory-")))
    results = []
    try:
        for name in args.engines.split(","):
            with _engine(name) as engine:
                figures = measure(engine, server.url, (server.process.pid,), args.images, args.decodes)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["within_bounds"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
