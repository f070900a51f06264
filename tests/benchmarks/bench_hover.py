"""
Hover-to-paint latency of the web client in headless Chromium, against the real server.

    .venv/bin/python tests/benchmarks/bench_hover.py [--decoder lowres] [--threads 0] [--moves 30]
        [--sweep-seconds 4] [--url http://127.0.0.1:5000/ [--url http://127.0.0.1:5001/ …]]

Starts `python -m backend serve` with the seeded random MobileSAM checkpoint (SAM_REFERENCE_DIR) unless
--url names a running server, opens the app (WASM backend), uploads images/dog.jpg and measures, with the
app's own User Timing entries ("sam:hover-to-paint": pointer event timestamp -> the animation frame after the
mask was painted):

- idle: the pointer jumps to a new pixel and rests until its mask is on screen (one decode in flight). A
  mask shows on the animation frame after its decode, so a hover's latency is its decode plus the wait for
  that frame, and the wait depends on where in the frame period the pointer event came. A hand's events come
  at any point of it; this script's would not (each jump follows the previous mask's frame by a fixed sleep,
  and its latencies fell on levels one frame apart, which turned medians and their ratios into steps). So each
  jump waits a further random fraction of a frame period, the same for every page (--fixed-phase: not);
- sweep: the pointer moves every 16 ms (a hand moving across the image); each painted frame's latency is
  measured from the pointer event it answers, so it includes waiting for the decode in flight
  (newest position wins, stale positions are skipped);
- click: click-to-paint of single clicks after the pointer rested on the pixel ("sam:click-to-paint"; the
  click reuses the hover preview's decode, so this is the cost of committing it), each after a random
  fraction of a frame period too.
Also the worker's own session.run and upsampling times ("sam:decode", "sam:upsample") of the idle phase.

Prints medians and 90th percentiles in ms. Timings are noisy on a shared machine: compare medians.

Comparing versions: give --url once per server (say the issue's start and main). Each gets its own page in
one browser, and the phases interleave: each idle hover and each click goes to every page in turn, and the
sweep is cut into --sweep-rounds turns per page. Both versions then meet the same machine, moment by moment;
runs one after the other do not (on a 2-core virtual machine whose cores the host moves between core
complexes every few seconds, a run's medians move by 25 %; `core_handoff.mjs`, whose figure is printed before
and after, tells which placement a quiet moment has). The ratios of the medians to the first URL's follow.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
# tests/ by its folder, not as a package: a wheel may ship a top-level `tests` package that would shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402
from reference_data import REFERENCE_DIR  # noqa: E402  (SAM_REFERENCE_DIR, else ../shared/reference)

CORE_HANDOFF = Path(__file__).with_name("core_handoff.mjs")
PHASES = ("idle", "sweep", "click", "decode", "upsample")
FRAME_SECONDS = 1 / 60  # headless Chromium's animation frame period


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(name, values):
    if not values:
        return f"{name:<22} no samples"
    return (
        f"{name:<22} n={len(values):<4} median {statistics.median(values):7.1f} ms   "
        f"p90 {percentile(values, 0.9):7.1f} ms   min {min(values):7.1f} ms"
    )


def core_handoff_ns() -> str:
    """core_handoff.mjs's figure (ns), or why there is none."""
    node = shutil.which("node")
    if not node:
        return "no node"
    done = subprocess.run([node, str(CORE_HANDOFF)], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else "failed"


def measures(page, name):
    return page.evaluate(f"performance.getEntriesByName({json.dumps(name)}).map((e) => e.duration)")


class App:
    """One server's app in its own page, with the photo uploaded; collects its measures phase by phase."""

    def __init__(self, browser, url: str, query: str) -> None:
        self.url = url
        self.page = page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"{url}?{query}")
        page.wait_for_function("document.body.dataset.decoder === 'ready'")
        self.provider = page.locator("#fact-provider").text_content()
        page.set_input_files("#file-input", str(REFERENCE_DIR / "images" / "dog.jpg"))
        page.wait_for_function("document.body.dataset.image === 'ready'")
        self.box = page.locator("#mask-canvas").bounding_box()
        self.result = {phase: [] for phase in PHASES}
        self.sweep_events = 0

    def at(self, fx, fy):
        return self.box["x"] + fx * self.box["width"], self.box["y"] + fy * self.box["height"]

    def take(self, **phases):
        """Adds the page's measures to the result ({phase: measure name}) and clears them."""
        for phase, name in phases.items():
            self.result[phase] += measures(self.page, name)
        self.page.evaluate("performance.clearMeasures()")

    def warm_up(self):
        # The first runs allocate.
        for i in range(3):
            self.page.mouse.move(*self.at(0.3 + 0.05 * i, 0.4))
            time.sleep(1.0)
        self.page.evaluate("performance.clearMeasures()")

    def idle_hover(self, i, phase):
        """After `phase` seconds, jumps to the i-th pixel and waits for its mask on screen, then rests."""
        page = self.page
        before = len(measures(page, "sam:hover-to-paint"))
        time.sleep(phase)
        page.mouse.move(*self.at(0.1 + 0.8 * ((i * 37) % 100) / 100, 0.1 + 0.8 * ((i * 61) % 100) / 100))
        page.wait_for_function(f"performance.getEntriesByName('sam:hover-to-paint').length > {before}")
        time.sleep(0.15)

    def sweep(self, seconds):
        """A pointer event every 16 ms for `seconds`, then the decodes in flight settle."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            t = self.sweep_events / 240
            self.page.mouse.move(*self.at(0.1 + 0.8 * (t % 1), 0.3 + 0.4 * ((t * 3) % 1)))
            self.sweep_events += 1
            time.sleep(0.016)
        time.sleep(2.0)
        self.take(sweep="sam:hover-to-paint")
        self.page.mouse.move(2, 2)

    def click(self, i, phase):
        """A click on a fresh object (Escape resets the prompts) after the pointer rested on its pixel."""
        page = self.page
        before = len(measures(page, "sam:click-to-paint"))
        page.mouse.move(*self.at(0.2 + 0.06 * (i % 10), 0.5))
        time.sleep(0.6 + phase)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_function(f"performance.getEntriesByName('sam:click-to-paint').length > {before}")
        page.keyboard.press("Escape")
        time.sleep(0.2)


def run(urls: list[str], args) -> list[dict]:
    """Each URL's {provider, idle, sweep, sweep_events, click, decode, upsample}, phases interleaved."""
    from playwright.sync_api import sync_playwright

    query = f"backend=wasm&decoder={args.decoder}" + (f"&threads={args.threads}" if args.threads else "")
    rounds = args.sweep_rounds or (1 if len(urls) == 1 else 4)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        apps = [App(browser, url, query) for url in urls]
        for app in apps:
            app.warm_up()
        phases = random.Random(0)
        for i in range(args.moves):
            phase = 0.0 if args.fixed_phase else phases.uniform(0.0, FRAME_SECONDS)
            for app in apps:
                app.idle_hover(i, phase)
        for app in apps:
            app.take(idle="sam:hover-to-paint", decode="sam:decode", upsample="sam:upsample")
        for _ in range(rounds):
            for app in apps:
                app.sweep(args.sweep_seconds / rounds)
        for i in range(min(10, args.moves)):
            phase = 0.0 if args.fixed_phase else phases.uniform(0.0, FRAME_SECONDS)
            for app in apps:
                app.click(i, phase)
        for app in apps:
            app.take(click="sam:click-to-paint")
        browser.close()
    return [{"url": app.url, "provider": app.provider, "sweep_events": app.sweep_events} | app.result for app in apps]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", default="lowres", help="decoder name from /api/model (default lowres)")
    parser.add_argument("--threads", type=int, default=0, help="WASM threads (0: the client's choice)")
    parser.add_argument("--moves", type=int, default=30, help="idle hover samples (per server)")
    parser.add_argument("--sweep-seconds", type=float, default=4.0, help="sweep time per server")
    parser.add_argument(
        "--sweep-rounds", type=int, default=0, help="turns the sweep is cut into (default 1, or 4 with several --url)"
    )
    parser.add_argument(
        "--url",
        action="append",
        help="a running server; give it again to compare servers interleaved (default: start one with the "
        "reference vit_t weights)",
    )
    parser.add_argument(
        "--fixed-phase",
        action="store_true",
        help="idle hovers and clicks at one phase of the frame period (the script's measure until 2026-12-07)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()

    server = None
    handoff_before = core_handoff_ns()
    try:
        if args.url:
            urls = [url if url.endswith("/") else url + "/" for url in args.url]
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="bench-hover-"))
            server = LiveServer(REFERENCE_DIR / "vit_t_seed0.pth", data_dir)
            urls = [server.url]
        results = run(urls, args)
    finally:
        if server:
            server.stop()
    handoff_after = core_handoff_ns()
    print(f"core handoff (core_handoff.mjs) before / after: {handoff_before} / {handoff_after} ns")
    for result in results:
        print(f"{result['url']}: decoder {args.decoder}, {result['provider']}, image 800x534 (dog.jpg)")
        print(summary("hover-to-paint idle", result["idle"]))
        print(summary("hover-to-paint sweep", result["sweep"]) + f"   ({result['sweep_events']} pointer events)")
        print(summary("click-to-paint", result["click"]))
        print(summary("  worker session.run", result["decode"]) + "   (idle phase)")
        print(summary("  worker upsampling", result["upsample"]) + "   (idle phase)")
    first = results[0]
    for result in results[1:]:
        ratios = ", ".join(
            f"{phase} {statistics.median(first[phase]) / statistics.median(result[phase]):.3f}"
            for phase in ("idle", "sweep", "click", "decode")
            if first[phase] and result[phase]
        )
        print(f"{result['url']}: {first['url']}'s median over this one's (> 1: this one is faster): {ratios}")
    if args.json:
        figures = results[0] if len(results) == 1 else results
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
