"""
Saves the screenshots of the README into docs/: the app for its three audiences.

    docs/screenshot.png            desktop, 1280x800: a kept object, the mask being edited, the candidates
    docs/screenshot-phone.png      phone, 390x844 with touch: a tapped point, the candidate picker at the thumb
    docs/screenshot-classroom.png  classroom (presenter layout), 1280x800: the three stages beside the image

    .venv/bin/python tests/browser/make_screenshot.py [--url http://127.0.0.1:5000/] [--image PATH] [--out DIR]

Starts the real server with the seeded random MobileSAM (backend.services.weights.random_model) unless --url is given
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

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}


def idle(page) -> None:
    page.wait_for_function("!document.body.dataset.pending || document.body.dataset.pending === '0'")
    time.sleep(0.4)  # the frame with the last mask


def open_image(page, url: str, image: Path) -> tuple[int, int]:
    page.goto(url + "?backend=wasm")
    page.wait_for_function("document.body.dataset.decoder === 'ready'")
    page.set_input_files("#file-input", str(image))
    page.wait_for_function("document.body.dataset.image === 'ready'")
    return page.locator("#mask-canvas").evaluate("c => [c.width, c.height]")


def desktop(browser, url: str, image: Path, output: Path) -> None:
    page = browser.new_page(**DESKTOP)
    width, height = open_image(page, url, image)
    # One kept object from a box, then a click being edited (three candidates offered).
    start, end = canvas_point(page, width * 0.05, height * 0.55), canvas_point(page, width * 0.45, height * 0.98)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    idle(page)
    page.keyboard.press("Enter")
    idle(page)
    page.fill("#object-list input", "cat")
    page.keyboard.press("Enter")
    page.mouse.click(*canvas_point(page, width * 0.6, height * 0.4))
    idle(page)
    page.mouse.move(2, 2)
    idle(page)
    page.screenshot(path=str(output))
    page.close()


def phone(browser, url: str, image: Path, output: Path) -> None:
    context = browser.new_context(**PHONE)
    page = context.new_page()
    width, height = open_image(page, url, image)
    page.touchscreen.tap(*canvas_point(page, width * 0.6, height * 0.4))
    idle(page)
    page.locator("#stage").scroll_into_view_if_needed()
    page.screenshot(path=str(output))
    context.close()


def classroom(browser, url: str, image: Path, output: Path) -> None:
    page = browser.new_page(**DESKTOP)
    width, height = open_image(page, url, image)
    page.keyboard.press("c")
    page.mouse.click(*canvas_point(page, width * 0.6, height * 0.4))
    idle(page)
    page.mouse.click(*canvas_point(page, width * 0.2, height * 0.2), button="right")  # a refinement
    idle(page)
    page.mouse.move(2, 2)
    idle(page)
    page.screenshot(path=str(output))
    page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--image", type=Path, help="default: scikit-image's cat, 800x534")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs", help="folder of the PNGs (default docs/)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    image = args.image or photo_jpeg(*SMALL_PHOTO)
    server = None if args.url else LiveServer(vit_t_checkpoint(), Path(tempfile.mkdtemp(prefix="shot-")))
    url = args.url or server.url
    args.out.mkdir(parents=True, exist_ok=True)
    shots = {
        "screenshot.png": desktop,
        "screenshot-phone.png": phone,
        "screenshot-classroom.png": classroom,
    }
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, take in shots.items():
                take(browser, url, image, args.out / name)
                print(f"wrote {args.out / name}")
            browser.close()
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
