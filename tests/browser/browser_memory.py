"""Memory of the browser running the app: the proportional set size (PSS) of a browser's processes, a plain
Chromium driven over the DevTools protocol, and the user's steps as page scripts. Shared by
tests/browser/test_page_memory.py (the bound, in seconds) and tests/benchmarks/bench_memory.py (every engine, 20 photos).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

MB = 1_000_000
WAIT_S = 120
# Processes in this one's tree that are not the browser: the drivers (Playwright's node is "node-MainThread")
# and the display.
NOT_BROWSER = ("node", "Xvfb", "WebKitWebDriver", "python")
# Browser processes that serve no page: Chromium starts its on-device model service by itself a few minutes
# after launch (it rates the machine for its built-in AI) and keeps it running. Its 60 MB depend on how long
# the browser has run, not on the app.
NOT_THE_PAGES = ("utility:OnDeviceModelService",)

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


def _kind(pid: int) -> str:
    """What the process does: Chromium's --type (renderer, gpu-process, utility:NetworkService...), else its name."""
    try:
        with open(f"/proc/{pid}/cmdline") as cmdline:
            words = cmdline.read().replace("\0", " ").split()  # Chromium rewrites its argv into one string
    except OSError:
        return ""
    kind = next((w[len("--type=") :] for w in words if w.startswith("--type=")), None)
    if kind is None:
        return _name(pid)
    sub = next((w.split("=", 1)[1].rsplit(".", 1)[-1] for w in words if w.startswith("--utility-sub-type=")), None)
    return f"{kind}:{sub}" if sub else kind


def browser_pss_by_kind(excluded_roots: tuple[int, ...] = (), root: int | None = None) -> dict[str, int]:
    """PSS in bytes, by kind of process, of the processes below `root` (else this one) except the trees of
    `excluded_roots` (the servers) and the drivers/display."""
    children = _children()
    excluded = set().union(*(_tree(pid, children) for pid in excluded_roots)) if excluded_roots else set()
    pids = _tree(root or os.getpid(), children) - excluded - {os.getpid()}
    by_kind: dict[str, int] = {}
    for pid in pids:
        if not _name(pid).startswith(NOT_BROWSER):
            kind = _kind(pid)
            if kind in NOT_THE_PAGES:
                continue
            by_kind[kind] = by_kind.get(kind, 0) + _pss_bytes(pid)
    return by_kind


def browser_pss(excluded_roots: tuple[int, ...] = (), root: int | None = None) -> int:
    """The sum of browser_pss_by_kind."""
    return sum(browser_pss_by_kind(excluded_roots, root).values())


class PeakSampler:
    """Samples browser_pss every 100 ms in a thread and keeps the highest, `peak`."""

    def __init__(self, excluded_roots: tuple[int, ...] = (), root: int | None = None) -> None:
        self.excluded_roots = excluded_roots
        self.root = root
        self.peak = 0
        self.peak_by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            by_kind = browser_pss_by_kind(self.excluded_roots, self.root)
            if sum(by_kind.values()) > self.peak:
                self.peak, self.peak_by_kind = sum(by_kind.values()), by_kind
            self._stop.wait(0.1)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------- engines
# Each engine is driven through one call: `run(body)` runs `body` (an async JS function body that returns
# something JSON-serializable) in the page and returns its value, so the flow below is the same everywhere.


def wrapped(body: str) -> str:
    return f"(async () => JSON.stringify((await (async () => {{ {body} }})()) ?? null))()"


class ChromiumEngine:
    """Debian's chromium, headless, over the DevTools protocol with a plain WebSocket, as a user runs it.

    Not through Playwright: its instrumentation is not a browser's. Its Network domain keeps every fetch's body
    in the renderer for `getResponseBody` (each image's embedding is a download of its own, +2 MB a photo), and
    its contexts are off the record, with the HTTP cache in the network process's memory (a user's profile
    keeps it on disk). Here only Runtime and Page are used, with a profile of its own on disk.
    """

    name = "chromium"

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        import websocket
        from browser_helpers import CHROMIUM, CHROMIUM_ARGS

        self._profile = tempfile.mkdtemp(prefix="sam-bench-chromium-")
        # Eager measurement: measureUserAgentSpecificMemory answers at once instead of at the next collection.
        args = [
            *CHROMIUM_ARGS,
            "--headless",
            f"--user-data-dir={self._profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            "--enable-blink-features=ForceEagerMeasureMemory",
            "--disable-features=BackForwardCache",
            *extra_args,
            "about:blank",
        ]
        self._process = subprocess.Popen(
            [CHROMIUM, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        address = None
        for line in self._process.stderr:
            if "DevTools listening on " in line:
                address = line.split("listening on ", 1)[1].strip()
                break
        if not address:
            raise RuntimeError("Chromium did not start its DevTools server")
        threading.Thread(target=lambda: [None for _ in self._process.stderr], daemon=True).start()
        self._socket = websocket.create_connection(address, timeout=WAIT_S, suppress_origin=True)
        self._next_id = 0
        self._workers: set[str] = set()  # DevTools sessions of the page's workers, once collect_garbage asked
        targets = self._command("Target.getTargets", {})["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self._command("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
            "sessionId"
        ]

    @property
    def pid(self) -> int:
        """The browser's first process: its tree is all the browser."""
        return self._process.pid

    def _command(self, method: str, params: dict, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            answer = json.loads(self._socket.recv())
            if answer.get("method") == "Target.attachedToTarget":
                self._workers.add(answer["params"]["sessionId"])
            elif answer.get("method") == "Target.detachedFromTarget":
                self._workers.discard(answer["params"]["sessionId"])
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error'].get('message')}")
                return answer["result"]

    def goto(self, url: str) -> None:
        self._command("Page.navigate", {"url": url}, self._session)
        deadline = time.monotonic() + WAIT_S
        while self.run(f"return location.href === {json.dumps(url)} && document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load")
            time.sleep(0.1)

    def run(self, body: str):
        result = self._command("Runtime.evaluate", {"expression": wrapped(body), "awaitPromise": True}, self._session)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text"))
        return json.loads(result["result"]["value"])

    def collect_garbage(self) -> None:
        """A full collection in the page and its workers (the decoder's). Not in onnxruntime's thread workers:
        they wait in Atomics.wait between runs and would not answer (their JS heaps are small)."""
        attach = {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True}
        self._command("Target.setAutoAttach", attach, self._session)
        time.sleep(0.5)
        self._command("Target.getTargets", {})  # reads the attach events that came meanwhile
        for session in [self._session, *self._workers]:
            with contextlib.suppress(RuntimeError):  # a worker that ended meanwhile
                self._command("HeapProfiler.collectGarbage", {}, session)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may close before the answer
            self._command("Browser.close", {})
        self._socket.close()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


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


def js(template: str, *values) -> str:
    return WAIT_JS.format(timeout_ms=WAIT_S * 1000) + (template % values if values else template)


def lowest(excluded_roots: tuple[int, ...], seconds: float, root: int | None = None) -> dict[str, int]:
    """The lowest sample (by kind of process) of `seconds`: a collection that is due is not counted as held."""
    deadline = time.monotonic() + seconds
    low = browser_pss_by_kind(excluded_roots, root)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        sample = browser_pss_by_kind(excluded_roots, root)
        if sum(sample.values()) < sum(low.values()):
            low = sample
    return low


def megabytes(by_kind: dict[str, int]) -> int:
    return round(sum(by_kind.values()) / MB)


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """MB by kind of process, after - before."""
    return {k: round((after.get(k, 0) - before.get(k, 0)) / MB) for k in sorted(after.keys() | before.keys())}
