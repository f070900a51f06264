"""The page for its three audiences (issue 15): a first-time visitor at 1280x800, a phone at 390x844 with touch,
a classroom projector; and keyboard / screen-reader users (axe-core). Real server, real Chromium.

Each test asserts what the user sees: where things are on screen (bounding boxes against the viewport), the
words shown, the files downloaded, the requests sent.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
from backend_fixtures import SMALL_PHOTO, photo_jpeg
from browser_helpers import (
    REPO_ROOT,
    LiveServer,
    canvas_point,
    click_and_leave,
    drop_first_request,
    log_texts,
    open_app,
    prompt_points,
    shown_mask,
    upload,
    wait_idle,
)
from PIL import Image

pytestmark = pytest.mark.timeout(300)

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True}
AXE_SCRIPT = REPO_ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory):
    """scikit-image's cat, 800x534 (sent as is: no client-side downscale)."""
    path = tmp_path_factory.mktemp("audience-photos") / "cat.jpg"
    shutil.copyfile(photo_jpeg(*SMALL_PHOTO), path)
    return path


@pytest.fixture(scope="session")
def demo_server():
    """A server with no checkpoint and downloads off: it falls back to seeded random weights and says so."""
    server = LiveServer(
        Path("unused.pth"), Path(tempfile.mkdtemp(prefix="sam-demo-")), extra_env={"SAM_CHECKPOINT": ""}
    )
    yield server
    server.stop()


@pytest.fixture
def desktop_page(page, live_server, photo_path):
    page.set_viewport_size(DESKTOP)
    open_app(page, live_server)
    upload(page, photo_path)
    return page


@pytest.fixture
def phone(browser):
    context = browser.new_context(**PHONE, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(90_000)
    yield page
    context.close()


def in_viewport(page, selector: str) -> bool:
    """The element's whole box is on screen (not scrolled away, not beyond the right edge)."""
    return page.evaluate(
        """(selector) => { const r = document.querySelector(selector).getBoundingClientRect();
        return r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight + 0.5
            && r.right <= innerWidth + 0.5; }""",
        selector,
    )


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def settings(page, grid: str, iou: str = "0", stability: str = "0") -> None:
    if not page.evaluate("document.querySelector('.settings').open"):
        page.click(".settings summary")
    page.select_option("#everything-grid", grid)
    page.fill("#everything-iou", iou)
    page.fill("#everything-stability", stability)


# ---------------------------------------------------------------------------------------- public demo


def test_everything_progress_is_a_bar_over_the_image_and_the_outcome_shows_there(desktop_page):
    page = desktop_page
    settings(page, "16")
    page.evaluate("window.scrollTo(0, 0)")
    page.click("#everything-button")
    bar = page.locator("[role=progressbar]#everything-progress")
    bar.wait_for(state="visible")
    assert in_viewport(page, "#everything-progress")
    # The bar sits over the image, where the user is looking, and the top status line says what runs.
    image_box, bar_box = page.locator("#stage").bounding_box(), bar.bounding_box()
    assert image_box["y"] <= bar_box["y"] <= image_box["y"] + image_box["height"]
    page.wait_for_function("document.getElementById('status-text').textContent.includes('everything')")
    assert page.locator("#everything-cancel").is_visible()
    page.wait_for_function("Number(document.getElementById('everything-progress').getAttribute('aria-valuenow')) > 0")
    # The outcome is over the image too.
    page.wait_for_function(
        "/^\\d+ masks?\\./.test(document.getElementById('overlay-text').textContent)", timeout=240_000
    )
    assert in_viewport(page, "#overlay-text")
    assert page.locator("#everything-progress").is_hidden() and page.locator("#everything-cancel").is_hidden()
    assert re.match(r"\d+ masks?\.", page.inner_text("#status-text"))


def test_cancel_stops_the_job_on_the_server(desktop_page, live_server):
    page = desktop_page
    settings(page, "32")
    with page.expect_response(lambda r: "/everything" in r.url and r.request.method == "POST") as started:
        page.click("#everything-button")
    job = started.value.json()
    page.locator("#everything-cancel").wait_for(state="visible")
    with page.expect_response(lambda r: r.request.method == "DELETE") as cancelled:
        page.click("#everything-cancel")
    assert cancelled.value.url.endswith(f"/api/everything/{job['job_id']}")
    assert cancelled.value.ok, cancelled.value.status
    status_url = live_server.url + job["status_url"].lstrip("/")
    for _ in range(100):
        state = requests.get(status_url, timeout=30).json()["status"]
        if state not in ("queued", "running"):
            break
        page.wait_for_timeout(100)
    assert state == "cancelled"
    page.wait_for_function("document.getElementById('overlay-text').textContent.startsWith('Cancelled')")
    assert page.locator("#everything-progress").is_hidden()
    # Masks streamed in before the cancel stay on show as an unfinished result, which the button then hides.
    outcome = page.inner_text("#overlay-text")
    if outcome.startswith("Cancelled: no masks"):
        assert page.inner_text("#everything-button") == "Segment everything"
    else:
        assert re.match(r"Cancelled: unfinished, \d+ masks? found before stopping\.", outcome), outcome
        assert page.inner_text("#everything-button") == "Hide everything"
        page.click("#everything-button")
        assert page.inner_text("#everything-button") == "Segment everything"
    # Esc cancels a running job too.
    page.click("#everything-button")
    page.locator("#everything-cancel").wait_for(state="visible")
    with page.expect_response(lambda r: r.request.method == "DELETE") as cancelled:
        page.keyboard.press("Escape")
    assert cancelled.value.ok


def test_an_everything_start_whose_connection_drops_is_sent_again(page, live_server, photo_path):
    """A phone's connection drops while "Segment everything" is on its way: the page sends it again, says so,
    and the job runs to its masks."""
    log_texts(page, "everything-status", "everythingLog")
    page.console_watch.allow += ["Failed to load resource", "net::ERR_FAILED"]
    page.set_viewport_size(DESKTOP)
    open_app(page, live_server)
    upload(page, photo_path)
    tries = []
    page.route("**/api/images/*/everything", drop_first_request(tries))
    settings(page, "8")
    page.click("#everything-button")
    page.wait_for_function(
        "/^\\d+ masks?\\./.test(document.getElementById('everything-status').textContent)", timeout=240_000
    )
    assert len(tries) == 2
    log = page.evaluate("window.everythingLog")
    assert any("The connection dropped while starting; trying again (attempt 2 of 4)…" in line for line in log), log


def test_everything_with_crop_layers_runs_from_the_page(desktop_page):
    page = desktop_page
    settings(page, "8")
    page.select_option("#everything-crops", "1")
    with page.expect_response(lambda r: "/everything" in r.url and r.request.method == "POST") as started:
        page.click("#everything-button")
    # The uploaded image goes with the job (the server keeps no pixels after encoding): no 409.
    assert started.value.status == 202, started.value.text()
    assert started.value.request.headers["content-type"].startswith("multipart/form-data")
    page.wait_for_function(
        "/^(\\d+ masks?\\.|No masks passed)/.test(document.getElementById('overlay-text').textContent)",
        timeout=280_000,
    )
    assert page.locator("#error-banner").is_hidden()


def test_export_after_keep_downloads_the_kept_object(desktop_page):
    page = desktop_page
    click_and_leave(page, 420, 250)
    mask = shown_mask(page)
    page.keyboard.press("Enter")  # keep it; nothing is selected afterwards
    wait_idle(page)
    assert "Object 1" in page.inner_text("#export-target")
    with page.expect_download() as download:
        page.click("#export-mask")
    png = np.array(Image.open(download.value.path()).convert("L")) > 127
    assert download.value.suggested_filename.endswith("Object_1_mask.png")
    assert np.array_equal(png, mask)
    assert page.locator("#error-banner").is_hidden()


def test_the_demo_model_note_is_one_short_line_that_wraps_and_can_be_dismissed(phone, demo_server):
    page = phone
    open_app(page, demo_server)
    banner = page.locator("#weights-banner")
    assert banner.is_visible()
    visitor_line = banner.locator("p").first.inner_text()
    assert "random" not in visitor_line.lower() or len(visitor_line) < 80
    assert not re.search(r"Errno|/|python|SAM_", visitor_line), visitor_line
    assert page.locator("#weights-details").is_hidden()  # the operator's words are behind "details"
    assert no_horizontal_overflow(page)
    assert banner.bounding_box()["width"] <= 390
    page.click("#weights-banner summary")
    assert "download-weights" in page.inner_text("#weights-details")
    assert no_horizontal_overflow(page)
    # The samples' tap targets are not covered by the note.
    page.wait_for_selector("#gallery-list button")
    first = page.locator("#gallery-list button").first
    first.scroll_into_view_if_needed()
    box = first.bounding_box()
    hit = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).closest('#gallery-list button') !== null",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
    )
    assert hit
    page.click("#weights-close")
    assert banner.is_hidden()


def test_one_progress_line_per_stage_even_while_the_decoder_downloads(page, live_server, photo_path, tmp_path):
    # Pixels the server has not seen (no cache hit), so it really encodes.
    fresh = tmp_path / "fresh.png"
    pixels = np.array(Image.open(photo_path))
    pixels[0, 0] = np.random.default_rng().integers(0, 255, 3)
    Image.fromarray(pixels).save(fresh)
    held = []
    page.context.route("**/models/**", lambda route: held.append(route))
    page.goto(live_server.url + "?backend=wasm")
    page.wait_for_function("document.getElementById('status-text').textContent.startsWith('Loading the decoder')")
    page.evaluate("""() => { window.statusLog = [];
        new MutationObserver(() => statusLog.push(document.getElementById('status-text').textContent))
            .observe(document.getElementById('status-text'), {childList: true, characterData: true, subtree: true}); }""")
    page.set_input_files("#file-input", str(fresh))
    page.wait_for_function("document.getElementById('status-text').textContent.includes('waiting for the decoder')")
    for route in held:
        route.continue_()
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.image)")
    assert page.evaluate("document.body.dataset.image") == "ready", page.inner_text("#error-text")
    log = page.evaluate("statusLog")
    # The image's stages in order; once the upload has started, the decoder's download never takes the line
    # from them (before it, the decoder's own line may still be redrawn).
    first_upload = next(i for i, s in enumerate(log) if s.startswith("Uploading"))
    assert not [s for s in log[first_upload:] if s.startswith("Loading the decoder")], log
    stages = [
        next(i for i, s in enumerate(log) if re.match(r"Uploading… [\d.]+ [KM]?B of [\d.]+ [KM]?B", s)),
        next(i for i, s in enumerate(log) if s.startswith("The server is encoding the image")),
        next(i for i, s in enumerate(log) if re.match(r"Downloading the embedding… [\d.]+ [KM]?B of [\d.]+ [KM]?B", s)),
        next(i for i, s in enumerate(log) if "waiting for the decoder" in s),
        len(log) - 1,
    ]
    assert stages == sorted(stages), log
    ready = log[-1]
    # Upload, encode and download each with their own figure; the embedding's size is the one counted above.
    assert re.search(r"Uploaded in [\d.]+ ms\. Encoded in [\d.]+ ms\. Downloaded the embedding 1\.00 MB", ready), ready


# ---------------------------------------------------------------------------------------- phone


def test_phone_layout_taps_zoom_and_markers(phone, demo_server, photo_path):
    page = phone
    open_app(page, demo_server)
    assert no_horizontal_overflow(page)
    page.wait_for_selector("#gallery-list button")
    sample = page.locator("#gallery-list button").first
    sample.scroll_into_view_if_needed()
    sample.tap()
    page.wait_for_function("document.body.dataset.image === 'ready'")
    assert in_viewport(page, "#stage"), "the opened image is not scrolled into view"
    assert no_horizontal_overflow(page)
    upload(page, photo_path)
    size = page.locator("#mask-canvas").evaluate("c => [c.width, c.height]")
    assert size == [800, 534]

    page.touchscreen.tap(*canvas_point(page, 420, 250))
    wait_idle(page)
    assert prompt_points(page) == [[420, 250, 1]]
    # The candidate picker is where the thumb is: on screen, in the lower part, while the image is in view.
    assert page.locator("#candidates").is_visible()
    assert in_viewport(page, "#candidates")
    assert page.locator("#candidates").bounding_box()["y"] > 844 / 2
    # Point markers are large enough to see on a phone.
    marker = page.locator("#prompt-layer circle").first.bounding_box()
    assert marker["width"] >= 10 and marker["height"] >= 10, marker
    assert no_horizontal_overflow(page)

    # Remove mode, then Keep: the next object starts in "Add area" again.
    page.check('input[name="mode"][value="0"]')
    page.click("#commit-button")
    wait_idle(page)
    assert page.is_checked('input[name="mode"][value="1"]')

    # Pinch to zoom: two fingers moving apart enlarge the image; a tap then still lands on the pixel under it.
    before = page.locator("#mask-canvas").bounding_box()
    cx, cy = canvas_point(page, 400, 267)
    cdp = page.context.new_cdp_session(page)

    def touch(kind, points):
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]},
        )

    touch("touchStart", [(cx - 30, cy), (cx + 30, cy)])
    for step in range(1, 6):
        touch("touchMove", [(cx - 30 - 12 * step, cy), (cx + 30 + 12 * step, cy)])
    touch("touchEnd", [])
    after = page.locator("#mask-canvas").bounding_box()
    assert after["width"] > before["width"] * 1.5, (before, after)
    assert prompt_points(page) == []  # the pinch added no point
    assert page.locator("#zoom-reset").is_visible()
    page.touchscreen.tap(*canvas_point(page, 390, 260))
    wait_idle(page)
    assert prompt_points(page) == [[390, 260, 1]]
    page.click("#zoom-reset")
    assert page.locator("#mask-canvas").bounding_box()["width"] == pytest.approx(before["width"], abs=1)

    page.click("#classroom-toggle")
    assert no_horizontal_overflow(page)


# ---------------------------------------------------------------------------------------- classroom


def test_classroom_presenter_layout_keeps_the_image_and_the_figures_in_view(desktop_page):
    page = desktop_page
    page.mouse.click(*canvas_point(page, 420, 250))
    wait_idle(page)
    scrolled = page.evaluate("scrollY")
    page.keyboard.press("c")
    assert page.evaluate("scrollY") == scrolled  # turning it on does not scroll the image away
    assert in_viewport(page, "#stage-image")
    for figure in ["#cls-encode", "#cls-bytes", "#cls-download", "#cls-decode"]:
        assert in_viewport(page, figure), figure
    # Projector type: the stage figures and captions at 24 px or more.
    for selector in ["#cls-encode", ".stage-card h3", ".stage-card dt", "#cls-candidates-caption"]:
        size = page.locator(selector).first.evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
        assert size >= 24, (selector, size)
    assert page.locator(".gallery").is_hidden() and page.locator(".export-panel").is_hidden()
    page.keyboard.press("c")
    assert page.locator(".gallery").is_visible()


def test_classroom_shows_the_mask_used_after_a_refinement(page, live_server, photo_path):
    page.set_viewport_size(DESKTOP)
    open_app(page, live_server)
    upload(page, photo_path)
    page.keyboard.press("c")
    # Before the first decode: a placeholder, not a black square.
    assert page.locator("#cls-heatmap-placeholder").is_visible()
    assert page.locator("#cls-heatmap").is_hidden()
    page.mouse.click(*canvas_point(page, 420, 250))
    wait_idle(page)
    assert page.locator("#cls-candidates figure").count() == 3
    click_and_leave(page, 200, 120, button="right")
    captions = page.locator("#cls-candidates figcaption").all_inner_texts()
    assert len(captions) == 1 and captions[0].startswith("The mask used"), captions
    assert "refinement" in page.inner_text("#cls-candidates-caption")
    assert page.locator("#cls-heatmap").is_visible() and page.locator("#cls-heatmap-placeholder").is_hidden()
    # A cache hit in plain words.
    upload(page, photo_path)
    assert page.inner_text("#cls-encode").startswith("Not needed: encoded before")


def test_step_through_plays_encoder_transfer_decoder_with_figures(desktop_page):
    page = desktop_page
    page.keyboard.press("c")
    page.evaluate("""() => { window.stageLog = [];
        new MutationObserver(() => {
            const active = document.querySelector('.stage-card.active');
            const text = document.getElementById('cls-narration').textContent;
            stageLog.push([active ? active.dataset.stage : null, text]);
        }).observe(document.getElementById('classroom'), {subtree: true, attributes: true, childList: true, characterData: true}); }""")
    page.click("#cls-play")
    page.mouse.click(*canvas_point(page, 420, 250))
    wait_idle(page)
    page.wait_for_function(
        "document.getElementById('cls-narration').textContent.startsWith('Only stage 3')", timeout=20_000
    )
    log = page.evaluate("stageLog")
    order = []
    for stage, _ in log:
        if stage and (not order or order[-1] != stage):
            order.append(stage)
    assert order == ["encoder", "transfer", "decoder"], log
    lines = {stage: text for stage, text in log if stage}
    assert re.search(r"\d+ ms", lines["encoder"]) and re.search(r"[\d.]+ MB", lines["transfer"])
    assert re.search(r"[\d.]+ ms", lines["decoder"])
    assert page.locator(".stage-card.active").count() == 0


# ---------------------------------------------------------------------------------------- keyboard and a11y


def axe_violations(page) -> list[str]:
    """Serious and critical axe-core violations (WCAG 2 A/AA rules) of the page as it is now."""
    page.add_script_tag(path=str(AXE_SCRIPT))
    found = page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}}))
        .violations.filter((v) => ['serious', 'critical'].includes(v.impact))
        .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)"""
    )
    return found


def test_keyboard_order_focus_roles_and_axe(page, live_server, photo_path):
    page.set_viewport_size(DESKTOP)
    open_app(page, live_server)
    assert axe_violations(page) == []
    # The image area has a role; Help lists Delete; the add/remove modes are real radio buttons.
    assert page.get_attribute("#stage", "role") == "application"
    page.keyboard.press("?")
    assert "Delete the selected object" in page.inner_text("#help-dialog")
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    radios = page.locator('input[type=radio][name="mode"]')
    assert radios.count() == 2
    for i in range(2):
        box = radios.nth(i).bounding_box()
        assert box["width"] >= 16 and box["height"] >= 16, box

    # Opening a sample moves the focus to the image.
    page.wait_for_selector("#gallery-list button")
    page.locator("#gallery-list button").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.dataset.image === 'ready'")
    page.wait_for_function("document.activeElement.id === 'stage'")

    # The live region says what was selected, not only timings.
    upload(page, photo_path)
    page.focus("#stage")
    page.keyboard.press("Space")
    wait_idle(page)
    assert re.match(r"Selected [\d,]+ px: candidate \d of 3, predicted IoU", page.inner_text("#status-text"))
    page.keyboard.press("c")
    assert axe_violations(page) == []
    page.keyboard.press("c")

    # Tab order follows the visual order: top bar, the image, the tools beside it, the samples below it.
    page.evaluate("window.scrollTo(0, 0)")
    page.focus(".skip-link")
    regions = ["top"]
    for _ in range(60):
        page.keyboard.press("Tab")
        region = page.evaluate(
            """() => { const el = document.activeElement;
            for (const [name, sel] of [['top', '.topbar, .banner, .skip-link'], ['image', '.workspace'], ['classroom', '.classroom'],
                ['tools', '.sidebar'], ['samples', '.gallery']]) if (el.closest(sel)) return name;
            return el === document.body ? 'body' : 'other'; }"""
        )
        if region == "body":
            break
        if not regions or regions[-1] != region:
            regions.append(region)
    assert regions[:4] == ["top", "image", "tools", "samples"], regions
