"""Helpers of the WebKit suite: a private X display, WebKitGTK over classic WebDriver, reading what the page shows.

WebKitGTK is Safari's engine (WebCore, JavaScriptCore and its WebAssembly) in a GTK shell: Debian's
`webkit2gtk-driver` (WebKitWebDriver) starts its MiniBrowser with `--automation`. It needs an X display
even when nothing looks at it, so the suite starts its own Xvfb. Classic WebDriver has no console or download
events: `watch_page` records the page's errors and the files it saves from inside the page.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from browser_helpers import SHOWN_MASK_JS, overlay_mask

WEBKIT_DRIVER = shutil.which("WebKitWebDriver") or "/usr/bin/WebKitWebDriver"
XVFB = shutil.which("Xvfb") or "/usr/bin/Xvfb"
WAIT_S = 90


@contextmanager
def xvfb_display():
    """A private Xvfb; yields its DISPLAY (":N"), chosen by the server itself (-displayfd), so none collide."""
    if not Path(XVFB).exists():
        raise RuntimeError(f"Xvfb not found at {XVFB}: install Debian's xvfb (make webkit)")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [XVFB, "-displayfd", str(write_end), "-screen", "0", "1400x1000x24", "-nolisten", "tcp"],
        pass_fds=[write_end],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as numbers:
            number = numbers.readline().strip()
        if not number:
            raise RuntimeError(f"Xvfb did not start (exit {process.poll()})")
        yield f":{number}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def launch_webkit(display: str):
    """A fresh WebKitGTK MiniBrowser under WebKitWebDriver on `display` (each test gets its own browser)."""
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.options import Options
    from selenium.webdriver.webkitgtk.service import Service

    if not Path(WEBKIT_DRIVER).exists():
        raise RuntimeError(f"WebKitWebDriver not found at {WEBKIT_DRIVER}: install webkit2gtk-driver (make webkit)")
    options = Options()
    options.add_argument("--automation")
    # Xvfb has no GPU: WebKitGTK would composite with Mesa's software OpenGL (llvmpipe), which no phone or Mac
    # does and which costs each page process about 60 MB and much CPU; it paints without that layer instead.
    env = {**os.environ, "DISPLAY": display, "WEBKIT_DISABLE_COMPOSITING_MODE": "1"}
    service = Service(executable_path=WEBKIT_DRIVER, env=env)
    driver = webdriver.WebKitGTK(options=options, service=service)
    driver.set_window_size(1280, 900)
    driver.set_script_timeout(WAIT_S)
    return driver


def wait_until(check, what: str, timeout_s: float = WAIT_S, every_s: float = 0.1):
    """Polls `check()` until it returns something truthy; raises AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def wait_js(driver, condition: str, what: str | None = None, timeout_s: float = WAIT_S):
    """Waits until the JS expression `condition` is truthy in the page; returns its value."""
    return wait_until(lambda: driver.execute_script(f"return ({condition});"), what or condition, timeout_s)


# The page's errors and saved files, recorded inside the page (classic WebDriver reports neither). Installed
# right after each navigation: a console.error of the page, an uncaught error or rejection, and the app's
# error banner (where the decoder worker's failures are shown) all fail the test.
WATCH_JS = """
if (!window.__watch) {
  window.__watch = {errors: [], downloads: []};
  const original = console.error.bind(console);
  console.error = (...args) => { window.__watch.errors.push(args.map(String).join(' ')); original(...args); };
  addEventListener('error', (e) => window.__watch.errors.push('uncaught: ' + e.message));
  addEventListener('unhandledrejection', (e) => window.__watch.errors.push('unhandled: ' + (e.reason?.message ?? e.reason)));
  // A saved file is a click on a link with `download`: read the Blob it points at instead of saving it.
  const click = HTMLAnchorElement.prototype.click;
  HTMLAnchorElement.prototype.click = function () {
    if (!this.download || !this.href.startsWith('blob:')) return click.call(this);
    const entry = {name: this.download, base64: null};
    window.__watch.downloads.push(entry);
    fetch(this.href).then((r) => r.arrayBuffer()).then((buffer) => {
      const bytes = new Uint8Array(buffer);
      let text = '';
      for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
      entry.base64 = btoa(text);
    });
  };
}
"""


def watch_page(driver) -> None:
    driver.execute_script(WATCH_JS)


def page_errors(driver) -> list[str]:
    errors = driver.execute_script("return window.__watch ? window.__watch.errors : []")
    banner = driver.execute_script("return document.getElementById('error-text')?.textContent || ''")
    return errors + ([f"error banner: {banner}"] if banner.strip() else [])


def open_app(driver, server, query: str = "backend=wasm") -> None:
    """Loads the app and waits until the decoder is ready."""
    driver.get(server.url + (f"?{query}" if query else ""))
    watch_page(driver)
    state = wait_js(
        driver, "['ready', 'error'].includes(document.body.dataset.decoder) && document.body.dataset.decoder"
    )
    assert state == "ready", f"the decoder failed: {text(driver, '#error-text')}"


def upload(driver, image_path: Path, selector: str = "#file-input") -> None:
    """Chooses a file with the page's file picker and waits until its embedding is in the worker."""
    driver.execute_script("delete document.body.dataset.image")
    driver.find_element("css selector", selector).send_keys(str(image_path))
    state = wait_js(driver, "['ready', 'error'].includes(document.body.dataset.image) && document.body.dataset.image")
    assert state == "ready", f"the image did not open: {text(driver, '#error-text')}"


def text(driver, selector: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", selector)


def wait_idle(driver) -> None:
    """Waits until every committed prompt has been decoded and painted."""
    time.sleep(0.05)
    wait_js(driver, "!document.body.dataset.pending || document.body.dataset.pending === '0'", "the pending decodes")


def shown_mask(driver) -> np.ndarray:
    """The mask overlay as the user sees it: bool [H, W], True where the overlay is painted."""
    return overlay_mask(driver.execute_script(SHOWN_MASK_JS))


OVERLAY_PAINTED_JS = """(() => { const c = document.getElementById('mask-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; })()"""


def wait_for_overlay(driver, painted: bool = True) -> None:
    wait_js(driver, OVERLAY_PAINTED_JS if painted else f"!{OVERLAY_PAINTED_JS}", f"the overlay painted={painted}")


def prompt_points(driver) -> list[list[int]]:
    """[x, y, label] of the point markers drawn on the image."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#prompt-layer circle')].map((c) => [
            Number(c.getAttribute('cx')) - 0.5, Number(c.getAttribute('cy')) - 0.5,
            c.classList.contains('positive') ? 1 : 0])"""
    )


# ---------------------------------------------------------------------------------------------- the mouse

WATCH_POINTER_JS = """
if (window.lastPointer === undefined) {
  window.lastPointer = null;
  const canvas = document.getElementById('mask-canvas');
  canvas.addEventListener('pointermove', (event) => {
    const b = canvas.getBoundingClientRect();
    const pixel = [Math.floor(((event.clientX - b.left) / b.width) * canvas.width),
                   Math.floor(((event.clientY - b.top) / b.height) * canvas.height)];
    window.lastPointer = {clientX: event.clientX, clientY: event.clientY, pixel};
  });
  canvas.addEventListener('pointerleave', () => (window.lastPointer = null));
}
const canvas = document.getElementById('mask-canvas');
canvas.scrollIntoView({block: 'center'});
const r = canvas.getBoundingClientRect();
return [r.x, r.y, r.width, r.height, canvas.width, canvas.height];
"""


def move_to(driver, x: int, y: int) -> None:
    """Moves the mouse to whole viewport coordinates (x, y) (WebDriver's pointer origin "viewport")."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver, duration=0)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.perform()


def canvas_point(driver, x: int, y: int) -> tuple[int, int]:
    """Whole viewport coordinates that WebKit maps to image pixel (x, y): aimed, read back, corrected."""
    left, top, width, height, cw, ch = driver.execute_script(WATCH_POINTER_JS)
    step_x, step_y = width / cw, height / ch
    point = [round(left + (x + 0.5) * step_x), round(top + (y + 0.5) * step_y)]
    for _ in range(3):
        move_to(driver, point[0] - 3, point[1])  # from aside, so the move to the point is an event of its own
        move_to(driver, *point)
        landed = wait_js(
            driver,
            f"window.lastPointer && Math.abs(lastPointer.clientX - {point[0]}) < 1 && "
            f"Math.abs(lastPointer.clientY - {point[1]}) < 1 && lastPointer.pixel",
            f"the pointer at {point} over the image",
            timeout_s=10,
        )
        if landed == [x, y]:
            return point[0], point[1]
        point = [point[0] + _nudge(x - landed[0], step_x), point[1] + _nudge(y - landed[1], step_y)]
    raise AssertionError(f"no whole viewport point lands on image pixel ({x}, {y})")


def _nudge(miss: int, step: float) -> int:
    if not miss:
        return 0
    return int(np.sign(miss)) * max(1, round(abs(miss) * step))


def click_pixel(driver, x: int, y: int, button: str = "left") -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton

    px, py = canvas_point(driver, x, y)
    actions = ActionBuilder(driver, duration=0)
    which = MouseButton.LEFT if button == "left" else MouseButton.RIGHT
    actions.pointer_action.move_to_location(px, py).pointer_down(which).pointer_up(which)
    actions.perform()
    wait_idle(driver)


def drag(driver, start: tuple[int, int], end: tuple[int, int]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver, duration=50)
    pointer = actions.pointer_action
    pointer.move_to_location(*start).pointer_down()
    pointer.move_to_location(start[0] + 20, start[1] + 20)
    pointer.move_to_location((start[0] + end[0]) // 2, (start[1] + end[1]) // 2)
    pointer.move_to_location(*end).pointer_up()
    actions.perform()


def leave_image(driver) -> None:
    """Moves the pointer off the image so no hover preview is drawn."""
    move_to(driver, 2, 2)


def click_and_leave(driver, x: int, y: int, button: str = "left") -> None:
    """Clicks image pixel (x, y), then moves the pointer off the image and waits: the overlay shows the kept
    prompts' mask, no hover preview."""
    click_pixel(driver, x, y, button)
    leave_image(driver)
    wait_idle(driver)


def press(driver, key: str, ctrl: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    if ctrl:
        chain.key_down(Keys.CONTROL).send_keys(key).key_up(Keys.CONTROL)
    else:
        chain.send_keys(key)
    chain.perform()


def download(driver, selector: str) -> tuple[str, bytes]:
    """Clicks `selector` and returns (file name, bytes) of the file the page saves."""
    count = driver.execute_script("return window.__watch.downloads.length")
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)
    entry = wait_js(
        driver,
        f"window.__watch.downloads.length > {count} && window.__watch.downloads[{count}].base64 !== null "
        f"&& window.__watch.downloads[{count}]",
        f"the file saved by {selector}",
    )
    return entry["name"], base64.b64decode(entry["base64"])


def png_bits(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(white, opaque): bool [H, W] of a PNG's pixels with red above 127, and with any alpha."""
    from io import BytesIO

    from PIL import Image

    rgba = np.asarray(Image.open(BytesIO(png)).convert("RGBA"))
    return rgba[..., 0] > 127, rgba[..., 3] > 0
