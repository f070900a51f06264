"""The web client's core flow in WebKit (Safari's engine): what a user sees, compared with the torch predictor.

See docs/webkit.md for what differs from Chromium and Firefox and how the suite deals with WebDriver's gaps.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import ISOLATION
from webkit_helpers import (
    canvas_point,
    click_and_leave,
    click_pixel,
    download,
    drag,
    leave_image,
    move_to,
    open_app,
    png_bits,
    press,
    prompt_points,
    shown_mask,
    text,
    upload,
    wait_idle,
    wait_js,
    watch_page,
)

MIN_AGREEMENT = 0.99
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def ready(driver, live_server, photo_path):
    open_app(driver, live_server)
    upload(driver, photo_path)
    return driver


def agreement(shown: np.ndarray, expected: np.ndarray) -> float:
    assert shown.shape == expected.shape, (shown.shape, expected.shape)
    return float((shown == expected).mean())


def predicted(oracle, photo_path, **prompt) -> tuple[np.ndarray, np.ndarray]:
    """The torch SamPredictor's masks and scores on the image the browser opened (decoded as the server does)."""
    oracle.use_image(str(photo_path))
    masks, scores, _ = oracle.predictor.predict(**prompt)
    return masks, scores


def point_prompt(x: int, y: int, multimask: bool = True) -> dict:
    return {
        "point_coords": np.array([[x, y]], np.float32),
        "point_labels": np.array([1]),
        "multimask_output": multimask,
    }


def test_the_page_is_isolated_and_says_how_many_threads_the_decoder_has_and_why(driver, live_server):
    open_app(driver, live_server)
    assert driver.execute_script("return crossOriginIsolated") is True
    assert driver.execute_script("return document.body.dataset.provider") == "wasm"
    runs_on = text(driver, "#fact-provider")
    threads = int(re.search(r"WebAssembly, (\d+) threads?", runs_on).group(1))
    note_shown = driver.execute_script("return !document.getElementById('threads-banner').hidden")
    if driver.execute_script("return typeof SharedArrayBuffer") == "function":
        assert threads > 1, runs_on
        assert not note_shown
    else:
        # WebKitGTK 2.50: isolated, yet no SharedArrayBuffer; the page runs on one thread and says why.
        assert threads == 1, runs_on
        assert note_shown
        note = text(driver, "#threads-banner")
        assert "one thread" in note and "SharedArrayBuffer" in note, note


def test_a_mouse_gets_the_mouse_wording(driver, live_server, photo_path):
    open_app(driver, live_server)
    move_to(driver, 400, 300)
    move_to(driver, 640, 450)
    first_steps = driver.execute_script("return document.getElementById('empty-state').innerText")
    assert "right-click" in first_steps
    assert not re.search(r"\btap\b", first_steps)
    upload(driver, photo_path)
    assert text(driver, "#status-text").startswith("Ready: hover over the image")


def test_hovering_paints_a_mask_and_leaving_clears_it(ready):
    driver = ready
    assert driver.execute_script("const c = document.getElementById('mask-canvas'); return [c.width, c.height]") == [
        600,
        400,
    ]
    assert not shown_mask(driver).any()
    move_to(driver, *canvas_point(driver, 300, 200))
    wait_js(driver, "performance.getEntriesByName('sam:hover-to-paint').length > 0", "a hover preview")
    assert shown_mask(driver).any()
    assert prompt_points(driver) == []  # hovering adds no prompt
    leave_image(driver)
    wait_js(
        driver,
        "!document.getElementById('mask-canvas').getContext('2d').getImageData(0, 0, 600, 400)"
        ".data.some((v, i) => i % 4 === 3 && v)",
        "the overlay cleared",
    )


def test_a_kept_click_exported_as_coco_matches_the_torch_predictor(ready, oracle, photo_path):
    driver = ready
    move_to(driver, *canvas_point(driver, 300, 200))
    wait_js(driver, "performance.getEntriesByName('sam:hover-to-paint').length > 0", "a hover preview")
    click_and_leave(driver, 300, 200)
    assert prompt_points(driver) == [[300, 200, 1]]
    shown = shown_mask(driver)
    masks, scores = predicted(oracle, photo_path, **point_prompt(300, 200))
    expected = masks[int(np.argmax(scores))]
    assert expected.any() and shown.any()
    assert agreement(shown, expected) >= MIN_AGREEMENT

    # The PNG exports hold exactly the mask shown.
    name, mask_png = download(driver, "#export-mask")
    assert name.endswith("_mask.png")
    white, _ = png_bits(mask_png)
    np.testing.assert_array_equal(white, shown)

    driver.find_element("css selector", "#commit-button").click()
    wait_idle(driver)
    assert driver.execute_script("return document.querySelectorAll('#object-list li').length") == 1
    name, body = download(driver, "#export-coco")
    assert name.endswith(".json")
    coco = json.loads(body)
    assert [coco["images"][0]["width"], coco["images"][0]["height"]] == [600, 400]
    [annotation] = coco["annotations"]
    assert annotation["area"] == int(shown.sum())
    from predictor_oracle import shown_mask as exported_mask

    assert agreement(exported_mask({"coco": annotation["segmentation"]}), expected) >= MIN_AGREEMENT


def test_a_click_offers_the_three_candidates_and_picking_one_shows_it(ready, oracle, photo_path):
    driver = ready
    click_and_leave(driver, 300, 200)
    masks, scores = predicted(oracle, photo_path, **point_prompt(300, 200))
    labels = driver.execute_script(
        "return [...document.querySelectorAll('#candidate-list button')].map((b) => b.innerText)"
    )
    assert len(labels) == 3
    shown_scores = [float(re.search(r"IoU (-?[\d.]+)", label).group(1)) for label in labels]
    np.testing.assert_allclose(shown_scores, scores, atol=0.02)
    best = int(np.argmax(scores))
    checked = (
        "return [...document.querySelectorAll('#candidate-list button')].map((b) => b.getAttribute('aria-checked'))"
    )
    assert driver.execute_script(checked)[best] == "true"
    other = (best + 1) % 3
    press(driver, str(other + 1))
    wait_idle(driver)
    wait_js(
        driver, f"document.querySelectorAll('#candidate-list button')[{other}].getAttribute('aria-checked') === 'true'"
    )
    assert agreement(shown_mask(driver), masks[other]) >= MIN_AGREEMENT


def test_a_dragged_box_matches_the_torch_predictors_box_prompt(ready, oracle, photo_path):
    driver = ready
    start, end = canvas_point(driver, 120, 80), canvas_point(driver, 480, 330)
    drag(driver, start, end)
    leave_image(driver)
    wait_idle(driver)
    rects = driver.execute_script(
        "return [...document.querySelectorAll('#prompt-layer rect.box')].map((b) => "
        "['x', 'y', 'width', 'height'].map((a) => Number(b.getAttribute(a))))"
    )
    assert len(rects) == 1
    x, y, w, h = rects[0]
    assert [x, y, x + w, y + h] == [120, 80, 480, 330]
    assert prompt_points(driver) == []
    masks, _ = predicted(oracle, photo_path, box=np.array([x, y, x + w, y + h], np.float32), multimask_output=False)
    shown = shown_mask(driver)
    assert shown.any()
    assert agreement(shown, masks[0]) >= MIN_AGREEMENT


def test_undo_takes_back_the_last_point_and_its_mask_then_the_first(ready):
    driver = ready
    click_and_leave(driver, 300, 200)
    first = shown_mask(driver)
    assert first.any()
    click_and_leave(driver, 150, 300)
    assert len(prompt_points(driver)) == 2
    assert not np.array_equal(shown_mask(driver), first)

    driver.find_element("css selector", "#undo-button").click()
    wait_idle(driver)
    assert prompt_points(driver) == [[300, 200, 1]]
    np.testing.assert_array_equal(shown_mask(driver), first)
    press(driver, "z", ctrl=True)
    wait_idle(driver)
    assert prompt_points(driver) == []
    assert not shown_mask(driver).any()
    assert driver.execute_script("return document.getElementById('undo-button').disabled") is True


def test_everything_mode_completes_paints_its_masks_and_exports_them_all(ready):
    driver = ready
    driver.execute_script(
        """document.querySelector('.settings').open = true;
        const set = (id, value) => { const input = document.querySelector(id); input.value = value;
          input.dispatchEvent(new Event('input', {bubbles: true})); input.dispatchEvent(new Event('change', {bubbles: true})); };
        set('#everything-grid', '8');
        // Random weights predict low IoUs: keep every candidate.
        set('#everything-iou', '0'); set('#everything-stability', '0');"""
    )
    driver.find_element("css selector", "#everything-button").click()
    status = wait_js(
        driver,
        "/^\\d+ masks?\\./.test(document.getElementById('everything-status').textContent) && "
        "document.getElementById('everything-status').textContent",
        "everything mode",
    )
    count = int(status.split(" ")[0])
    assert count > 0
    assert shown_mask(driver).any()
    assert text(driver, "#everything-button") == "Hide everything"
    _, body = download(driver, "#everything-export")
    coco = json.loads(body)
    assert len(coco["annotations"]) == count
    assert all(a["segmentation"]["size"] == [400, 600] for a in coco["annotations"])


def embedding_page(app_url: str) -> bytes:
    """A blank page of another tool that loads the app's element (docs/embedding.md, recipe 1)."""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>A tool embedding SAM</title>
<script type="module" src="{app_url}embed/sam-segmenter.js"></script></head>
<body><sam-segmenter id="sam"></sam-segmenter></body></html>""".encode()


def test_the_sam_segmenter_element_works_on_a_page_of_another_origin(driver, live_server, host, photo_path, oracle):
    host.routes["/isolated.html"] = (embedding_page(live_server.url), "text/html; charset=utf-8", ISOLATION)
    driver.get(host.url + "isolated.html")
    watch_page(driver)
    size = driver.execute_async_script(
        """const [src, done] = arguments;
        customElements.whenDefined('sam-segmenter').then(() => document.getElementById('sam').open(src))
          .then(done, (e) => done({error: String(e)}));""",
        host.url + photo_path.name,
    )
    assert size == {"width": 600, "height": 400}
    assert driver.execute_script("return crossOriginIsolated") is True
    info = driver.execute_script("return document.getElementById('sam').decoderInfo")
    if driver.execute_script("return typeof SharedArrayBuffer") == "function":
        assert info["threads"] > 1, info
    else:
        assert info["threads"] == 1 and "SharedArrayBuffer" in info["singleThreadReason"], info
    answer = driver.execute_async_script(
        """const done = arguments[0];
        document.getElementById('sam').segment({points: [{x: 300, y: 200, label: 1}], multimask: true})
          .then(done, (e) => done({error: String(e)}));"""
    )
    assert len(answer["masks"]) == 3, answer
    masks, scores = predicted(oracle, photo_path, **point_prompt(300, 200))
    from predictor_oracle import shown_mask as exported_mask

    best_rle = answer["masks"][0]["rle"]  # best predicted IoU first
    assert agreement(exported_mask({"coco": best_rle}), masks[int(np.argmax(scores))]) >= MIN_AGREEMENT
    driver.execute_script("document.getElementById('sam').keep()")
    objects = wait_js(driver, "document.getElementById('sam').getObjects()", "the kept object")
    assert len(objects) == 1
    assert objects[0]["segmentation"] == best_rle


def test_the_decoders_webassembly_memory_is_sized_to_the_model_and_grows_within_it(ready):
    """Issue #26: onnxruntime-web's 4 GiB maximum, reserved up front for a shared memory, is more than a phone's
    tab gets; the decoder's memory may grow to twice the model plus 192 MiB plus 48 MiB for each further prompt of a batched run (3), and does grow past its first 16 MiB."""
    driver = ready
    click_pixel(driver, 300, 200)
    decoder = driver.execute_script(
        "return [document.getElementById('fact-decoder').textContent, "
        "performance.getEntriesByName('sam:decode').at(-1).detail.wasmMemoryBytes]"
    )
    found = re.search(r", ([\d.]+) MB, WebAssembly memory up to ([\d.]+) MB", decoder[0])
    assert found, decoder
    model_mb, limit_mb = map(float, found.groups())
    assert abs(limit_mb - (2 * model_mb + 192 + 3 * 48)) < 0.1, decoder  # the page's MB are MiB
    assert 16 * 2**20 < decoder[1] <= limit_mb * 2**20, decoder
