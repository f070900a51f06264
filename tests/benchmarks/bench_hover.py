"""
Hover-to-paint latency of the web client in headless Chromium, against the real server.

    .venv/bin/python tests/benchmarks/bench_hover.py [--decoder lowres] [--threads 0] [--moves 30]
        [--sweep-seconds 4] [--url http://127.0.0.1:5000/]

Starts `python -m backend serve` with the seeded random MobileSAM checkpoint (SAM_REFERENCE_DIR) unless
--url names a running server, opens the app (WASM backend), uploads images/dog.jpg and measures, with the
app's own User Timing entries ("sam:hover-to-paint": pointer event timestamp -> the animation frame after the
mask was painted):

- idle: the pointer jumps to a new pixel and rests until its mask is on screen (one decode in flight);
- sweep: the pointer moves every 16 ms (a hand moving across the image); each painted frame's latency is
  measured from the pointer event it answers, so it includes waiting for the decode in flight
  (newest position wins, stale positions are skipped);
- click: click-to-paint of single clicks after the pointer rested on the pixel ("sam:click-to-paint"; the
  click reuses the hover preview's decode, so this is the cost of committing it).
Also the worker's own session.run and upsampling times ("sam:decode", "sam:upsample") of the idle phase.

Prints medians and 90th percentiles in ms. Timings are noisy on a shared machine: compare medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def measures(page, name):
    return page.evaluate(f"performance.getEntriesByName({json.dumps(name)}).map((e) => e.duration)")


def run(url: str, args) -> dict:
    from playwright.sync_api import sync_playwright

    query = f"backend=wasm&decoder={args.decoder}" + (f"&threads={args.threads}" if args.threads else "")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"{url}?{query}")
        page.wait_for_function("document.body.dataset.decoder === 'ready'")
        provider = page.locator("#fact-provider").text_content()
        page.set_input_files("#file-input", str(REFERENCE_DIR / "images" / "dog.jpg"))
        page.wait_for_function("document.body.dataset.image === 'ready'")
        box = page.locator("#mask-canvas").bounding_box()

        def at(fx, fy):
            return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

        # Warm up the session (first runs allocate).
        for i in range(3):
            page.mouse.move(*at(0.3 + 0.05 * i, 0.4))
            time.sleep(1.0)
        page.evaluate("performance.clearMeasures()")

        # Idle: jump, wait for the paint, rest.
        for i in range(args.moves):
            before = len(measures(page, "sam:hover-to-paint"))
            page.mouse.move(*at(0.1 + 0.8 * ((i * 37) % 100) / 100, 0.1 + 0.8 * ((i * 61) % 100) / 100))
            page.wait_for_function(f"performance.getEntriesByName('sam:hover-to-paint').length > {before}")
            time.sleep(0.15)
        idle = measures(page, "sam:hover-to-paint")
        decode = measures(page, "sam:decode")
        upsample = measures(page, "sam:upsample")
        page.evaluate("performance.clearMeasures()")

        # Sweep: a pointer event every 16 ms.
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < args.sweep_seconds:
            t = step / 240
            page.mouse.move(*at(0.1 + 0.8 * (t % 1), 0.3 + 0.4 * ((t * 3) % 1)))
            step += 1
            time.sleep(0.016)
        time.sleep(2.0)
        sweep = measures(page, "sam:hover-to-paint")
        page.mouse.move(2, 2)
        page.evaluate("performance.clearMeasures()")

        # Clicks (each on a fresh object: Escape resets the prompts).
        for i in range(min(10, args.moves)):
            page.mouse.move(*at(0.2 + 0.06 * i, 0.5))
            time.sleep(0.6)
            page.mouse.down()
            page.mouse.up()
            page.wait_for_function(f"performance.getEntriesByName('sam:click-to-paint').length > {i}")
            page.keyboard.press("Escape")
            time.sleep(0.2)
        clicks = measures(page, "sam:click-to-paint")
        browser.close()
    return {
        "provider": provider,
        "idle": idle,
        "sweep": sweep,
        "sweep_events": step,
        "click": clicks,
        "decode": decode,
        "upsample": upsample,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", default="lowres", help="decoder name from /api/model (default lowres)")
    parser.add_argument("--threads", type=int, default=0, help="WASM threads (0: the client's choice)")
    parser.add_argument("--moves", type=int, default=30, help="idle hover samples")
    parser.add_argument("--sweep-seconds", type=float, default=4.0)
    parser.add_argument("--url", help="a running server (default: start one with the reference vit_t weights)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()

    server = None
    try:
        if args.url:
            url = args.url if args.url.endswith("/") else args.url + "/"
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="bench-hover-"))
            server = LiveServer(REFERENCE_DIR / "vit_t_seed0.pth", data_dir)
            url = server.url
        result = run(url, args)
    finally:
        if server:
            server.stop()
    print(f"decoder {args.decoder}, {result['provider']}, image 800x534 (dog.jpg)")
    print(summary("hover-to-paint idle", result["idle"]))
    print(summary("hover-to-paint sweep", result["sweep"]) + f"   ({result['sweep_events']} pointer events)")
    print(summary("click-to-paint", result["click"]))
    print(summary("  worker session.run", result["decode"]) + "   (idle phase)")
    print(summary("  worker upsampling", result["upsample"]) + "   (idle phase)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
