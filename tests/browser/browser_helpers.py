"""Helpers of the browser tests and benchmarks: the real server in a subprocess, Chromium's flags, and
reading what the page shows (mask overlay, prompt markers)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
ORT_DIST = REPO_ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEBGPU_ARGS = [
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--enable-unsafe-swiftshader",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SERVER_START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real app in a subprocess; `url` ends with a slash."""

    def __init__(self, checkpoint: Path, data_dir: Path, extra_env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ)
        env.update(
            {
                "SAM_MODEL_TYPE": "vit_t",
                "SAM_CHECKPOINT": str(checkpoint),
                "SAM_DATA_DIR": str(data_dir),
                "SAM_ALLOW_DOWNLOAD": "0",
                "SAM_PRECISION": "fp32",
                "SAM_DEVICE": "cpu",
                "SAM_LOG_LEVEL": "WARNING",
            }
        )
        env.update(extra_env or {})
        self.log_path = data_dir / "server.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - stays open for the server's life; closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                if requests.get(self.url + "healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not come up in {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class ExternalServer:
    """A server someone else started (SAM_BROWSER_TEST_URL); it must run the seeded random vit_t (the server's own fallback: no checkpoint, SAM_ALLOW_DOWNLOAD=0)."""

    def __init__(self, url: str) -> None:
        self.url = url if url.endswith("/") else url + "/"


class ConsoleWatch:
    """Collects console errors and page exceptions; `allow` lists substrings a test expects."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.allow: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allow)]


# ---------------------------------------------------------------------------------------------- helpers


def encoded_image(server: LiveServer, path: Path) -> tuple[str, list[int]]:
    """Uploads the image file at `path` to the server: its float32 embedding's URL and the image's [H, W]."""
    with path.open("rb") as image:
        info = requests.post(server.url + "api/images", files={"image": image}, timeout=120).json()
    return server.url + f"api/embeddings/{info['id']}?format=f32", [info["height"], info["width"]]


def open_app(page, server: LiveServer, query: str = "backend=wasm") -> None:
    """Loads the app and waits until the decoder is ready."""
    page.goto(server.url + (f"?{query}" if query else ""))
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.decoder)")
    assert page.evaluate("document.body.dataset.decoder") == "ready", page.inner_text("#error-text")


def upload(page, image_path: Path) -> None:
    """Chooses an image with the file picker and waits until its embedding is in the worker."""
    page.set_input_files("#file-input", str(image_path))
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.image)")
    assert page.evaluate("document.body.dataset.image") == "ready", page.inner_text("#error-text")


def wait_idle(page) -> None:
    """Waits until every committed prompt has been decoded and painted."""
    page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 50))")
    page.wait_for_function("!document.body.dataset.pending || document.body.dataset.pending === '0'")


# The body of a script (Playwright: wrapped in a function; WebDriver: as is) that returns the mask overlay's
# painted pixels as {w, h, b64: base64 of h*w bytes, 1 where painted}; `overlay_mask` decodes it.
SHOWN_MASK_JS = """
const canvas = document.getElementById('mask-canvas');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const bits = new Uint8Array(canvas.width * canvas.height);
for (let i = 0; i < bits.length; i++) bits[i] = data[i * 4 + 3] > 0 ? 1 : 0;
let text = '';
for (let i = 0; i < bits.length; i += 8192) text += String.fromCharCode(...bits.subarray(i, i + 8192));
return {w: canvas.width, h: canvas.height, b64: btoa(text)};
"""


def overlay_mask(encoded: dict) -> np.ndarray:
    """What SHOWN_MASK_JS returned, as bool [H, W]."""
    bits = np.frombuffer(base64.b64decode(encoded["b64"]), dtype=np.uint8)
    return bits.reshape(encoded["h"], encoded["w"]).astype(bool)


def shown_mask(page) -> np.ndarray:
    """The mask overlay as the user sees it: bool [H, W], True where the overlay is painted."""
    return overlay_mask(page.evaluate(f"() => {{{SHOWN_MASK_JS}}}"))


def canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of the centre of image pixel (x, y) (scrolling the image into view)."""
    canvas = page.locator("#mask-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    width, height = page.evaluate(
        "[document.getElementById('mask-canvas').width, document.getElementById('mask-canvas').height]"
    )
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def prompt_points(page) -> list[tuple[int, int, int]]:
    """(x, y, label) of the point markers drawn on the image."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#prompt-layer circle')].map((c) => [
            Number(c.getAttribute('cx')) - 0.5, Number(c.getAttribute('cy')) - 0.5,
            c.classList.contains('positive') ? 1 : 0])"""
    )


def leave_image(page) -> None:
    """Moves the pointer off the image so no hover preview is drawn."""
    page.mouse.move(2, 2)


def click_pixel(page, x: int, y: int, button: str = "left") -> None:
    """Clicks image pixel (x, y) and waits until its prompt is decoded and painted."""
    page.mouse.click(*canvas_point(page, x, y), button=button)
    wait_idle(page)


def click_and_leave(page, x: int, y: int, button: str = "left") -> None:
    """Clicks image pixel (x, y), then moves the pointer off the image and waits: the overlay shows the kept
    prompts' mask, no hover preview."""
    click_pixel(page, x, y, button)
    leave_image(page)
    wait_idle(page)


_RESOURCE_ENTRIES_JS = """() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
    .map((e) => ({name: e.name, transferSize: e.transferSize, encodedBodySize: e.encodedBodySize}))"""


def resource_transfers(page) -> list[dict]:
    """Resource Timing entries {name, transferSize, encodedBodySize} of the page and of its workers.

    A worker (the decoder's, onnxruntime's threads) keeps its own entries; transferSize is 0 for a response
    served from the cache without a request, headers only for a revalidated one.
    """
    entries = page.evaluate(_RESOURCE_ENTRIES_JS)
    # Only the decoder's worker: onnxruntime's WASM thread workers sit in Atomics.wait between runs and never
    # answer an evaluate (it hung); they fetch nothing the decoder worker did not already load.
    for worker in (w for w in page.workers if w.url.endswith("/decoder-worker.js")):
        entries += worker.evaluate(_RESOURCE_ENTRIES_JS.replace("performance.getEntriesByType('navigation')", "[]"))
    return entries


def wait_for_a_mask(page, fractions=((0.5, 0.5), (0.3, 0.35), (0.7, 0.6), (0.25, 0.75), (0.8, 0.25))) -> None:
    """Hovers points of the image (fractions of its size) until the mask overlay shows something.

    With random weights the mask under one point may be empty, so a few places are tried, 30 s each.
    """
    width, height = page.evaluate(
        "[document.getElementById('mask-canvas').width, document.getElementById('mask-canvas').height]"
    )
    for fx, fy in fractions:
        page.mouse.move(*canvas_point(page, fx * width, fy * height))
        try:
            page.wait_for_function(
                """() => { const c = document.getElementById('mask-canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }""",
                timeout=30_000,
            )
            return
        except Exception:  # Playwright's TimeoutError: try the next place
            continue
    raise AssertionError("no mask was drawn under any of the hovered points")


def first_mask_on_a_gallery_image(page, server, query: str = "backend=wasm") -> list[dict]:
    """Opens the app, picks the first gallery image, hovers until a mask shows; returns resource_transfers."""
    gallery = requests.get(server.url + "api/gallery", timeout=30).json()
    assert gallery, "the server lists no sample images"
    open_app(page, server, query)
    page.click(f'#gallery-list button[aria-label="Open the sample {gallery[0]["name"]}"]')
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.image)")
    assert page.evaluate("document.body.dataset.image") == "ready", page.inner_text("#error-text")
    wait_for_a_mask(page)
    return resource_transfers(page)


class StaticFiles(http.server.SimpleHTTPRequestHandler):
    """Files under URL prefixes (``routes``: prefix -> directory), cross-origin isolated like the app."""

    routes: dict[str, Path] = {}
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
    }

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        for prefix, directory in self.routes.items():
            target = (directory / path[len(prefix) :]).resolve()
            if path.startswith(prefix) and (directory.resolve() in target.parents or target == directory.resolve()):
                return str(target)
        return "/nonexistent"

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def static_server(routes: dict[str, Path]):
    """The page's modules without the app: /js/ (web/js), /vendor/ort/ (onnxruntime-web) and ``routes``;
    yields the base URL (ending with a slash)."""
    handler = type(
        "Routes", (StaticFiles,), {"routes": {"/js/": REPO_ROOT / "web" / "js", "/vendor/ort/": ORT_DIST, **routes}}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def drop_first_request(tries: list):
    """A route handler that drops the first request it sees (a connection reset) and lets the others through;
    `tries` collects every request's URL."""

    def handler(route):
        tries.append(route.request.url)
        if len(tries) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    return handler


def log_texts(page, element_id: str, log: str) -> None:
    """From the page's start, window[log] collects the texts element_id shows, in order (the page replaces them
    as it goes)."""
    page.add_init_script(
        f"""window.{log} = [];
        document.addEventListener("DOMContentLoaded", () => {{
          const line = document.getElementById("{element_id}");
          new MutationObserver(() => window.{log}.push(line.textContent))
            .observe(line, {{ childList: true, characterData: true, subtree: true }});
        }});"""
    )
