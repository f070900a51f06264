"""
Bytes over the wire of a first visit, on the WASM and the WebGPU path: Resource Timing transferSize of the page
and its workers, from opening the page to the first mask on a gallery image, empty cache.

    .venv/bin/python tests/benchmarks/bench_first_visit.py [--url http://127.0.0.1:5000/]

Without --url it starts the real server (python -m backend serve) on seeded random weights (no checkpoint, no
download). WebGPU runs on SwiftShader (Chromium's CPU emulation); its onnxruntime-web bundle is the larger one.
Prints the total and the largest transfers per path. Not collected by pytest.
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from browser_helpers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    WEBGPU_ARGS,
    ExternalServer,
    LiveServer,
    first_mask_on_a_gallery_image,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one on random weights)")
    parser.add_argument("--paths", nargs="+", default=["wasm", "webgpu"], choices=("wasm", "webgpu"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-first-visit-") as tmp:
        if args.url:
            server = ExternalServer(args.url)
        else:
            server = LiveServer(Path(""), Path(tmp), extra_env={"SAM_CHECKPOINT": ""})
        try:
            with sync_playwright() as playwright:
                for path in args.paths:
                    flags = WEBGPU_ARGS if path == "webgpu" else CHROMIUM_ARGS
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
                    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                    page.set_default_timeout(600_000)
                    entries = first_mask_on_a_gallery_image(page, server, f"backend={path}")
                    provider = page.evaluate("document.body.dataset.provider")
                    total = sum(e["transferSize"] for e in entries)
                    print(f"{path} (ran on {provider}): {total:,} B over the wire in {len(entries)} requests")
                    for entry in sorted(entries, key=lambda e: -e["transferSize"])[:6]:
                        print(f"  {entry['transferSize']:>10,} B  {entry['name'].split('?')[0]}")
                    browser.close()
        finally:
            if not args.url:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
