"""
Saves docs/screenshot.png: the app with an image, a kept object, the current mask and the classroom view.

    .venv/bin/python tests/browser/make_screenshot.py [--url http://127.0.0.1:5000/] [--image PATH]

Starts the real server with the seeded random MobileSAM checkpoint unless --url is given (with random
weights the masks do not follow objects; run it against a server with real weights for a nicer picture).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, LiveServer, canvas_point  # noqa: E402

REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--image", type=Path, default=REFERENCE_DIR / "images" / "dog.jpg")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    server = None if args.url else LiveServer(REFERENCE_DIR / "vit_t_seed0.pth", Path(tempfile.mkdtemp(prefix="shot-")))
    url = args.url or server.url
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.set_default_timeout(120_000)
            page.goto(url + "?backend=wasm")
            page.wait_for_function("document.body.dataset.decoder === 'ready'")
            page.set_input_files("#file-input", str(args.image))
            page.wait_for_function("document.body.dataset.image === 'ready'")
            width, height = page.locator("#mask-canvas").evaluate("c => [c.width, c.height]")
            # One kept object from a box, then a click being edited, then the pointer hovering elsewhere.
            start, end = (
                canvas_point(page, width * 0.05, height * 0.55),
                canvas_point(page, width * 0.45, height * 0.98),
            )
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(*end, steps=5)
            page.mouse.up()
            page.wait_for_function("document.body.dataset.pending === '0'")
            page.keyboard.press("Enter")
            page.wait_for_function("document.body.dataset.pending === '0'")
            page.fill("#object-list input", "dog")
            page.check("#classroom-toggle")
            page.mouse.click(*canvas_point(page, width * 0.75, height * 0.4))
            page.wait_for_function("document.body.dataset.pending === '0'")
            time.sleep(0.5)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        if server:
            server.stop()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
