"""
Saves docs/screenshot.png: the app with an image, a kept object, the current mask and the classroom view.

    .venv/bin/python tests/browser/make_screenshot.py [--url http://127.0.0.1:5000/] [--image PATH]

Starts the real server with the seeded random MobileSAM (backend.weights.random_model) unless --url is given
(with random weights the masks do not follow objects; run it against a server with real weights for a nicer
picture). The default image is scikit-image's cat photo, enlarged to 800x534.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from backend_fixtures import SMALL_PHOTO, photo_jpeg, vit_t_checkpoint  # noqa: E402
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, LiveServer, canvas_point  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--image", type=Path, help="default: scikit-image's cat, 800x534")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    image = args.image or photo_jpeg(*SMALL_PHOTO)
    server = None if args.url else LiveServer(vit_t_checkpoint(), Path(tempfile.mkdtemp(prefix="shot-")))
    url = args.url or server.url
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.set_default_timeout(120_000)
            page.goto(url + "?backend=wasm")
            page.wait_for_function("document.body.dataset.decoder === 'ready'")
            page.set_input_files("#file-input", str(image))
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
            page.fill("#object-list input", "cat")
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
