"""Embedding in other web tools, with two origins: a host page on one loopback port embeds the app served on
another (the `<sam-segmenter>` element and the `/embed` iframe protocol), plainly and cross-origin isolated.

The app runs on its seeded random weights (no checkpoint, no network: ``backend.services.weights.random_model()``);
masks are compared with the torch ``SamPredictor`` of the same weights holding the server's own embedding.
The host pages are served by a tiny http.server in this process, with or without COOP/COEP.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from browser_helpers import REPO_ROOT, ConsoleWatch, LiveServer, free_port
from PIL import Image

pytestmark = pytest.mark.timeout(300)

MIN_AGREEMENT = 0.99
MAX_PIXELS = 300_000  # the app's SAM_MAX_PIXELS here: an 800x800 image is over it
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


# ---------------------------------------------------------------------------------------------- the host


class HostServer:
    """A second origin: serves the pages the tests register (``add(path, body, headers)``) on its own port."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path not in routes:
                    self.send_error(404)
                    return
                body, content_type, headers = routes[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.origin = self.url.rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.add("/favicon.ico", b"", "image/x-icon")  # Chromium asks for it; a 404 would be a console error

    def add(self, path: str, body: bytes | str, content_type: str = "text/html; charset=utf-8", **headers) -> str:
        self.routes[path] = (body.encode() if isinstance(body, str) else body, content_type, headers)
        return self.url + path.lstrip("/")

    def add_image(self, path: str, pixels: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        # Readable by the app's /embed page (another origin) and by isolated pages.
        return self.add(
            path,
            buffer.getvalue(),
            "image/png",
            **{"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def coffee_pixels() -> np.ndarray:
    from skimage import data

    return data.coffee()  # 600x400 RGB, under the client's 1024 downscale: the server encodes these pixels


@pytest.fixture(scope="module")
def host():
    server = HostServer()
    server.add_image("/images/coffee.png", coffee_pixels())
    server.add("/images/notes.txt", "not an image", "text/plain", **{"Access-Control-Allow-Origin": "*"})
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    server.add_image("/images/large.png", noise)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stranger():
    """A third origin, not allowed to drive the iframe."""
    server = HostServer()
    yield server
    server.stop()


def start_app(data_dir: Path, env: dict[str, str]) -> LiveServer:
    """The real app on the random weights (SAM_CHECKPOINT empty = unset, downloads off)."""
    return LiveServer(Path(""), data_dir, {"SAM_CHECKPOINT": "", "SAM_MAX_PIXELS": str(MAX_PIXELS), **env})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data dir for every app of this module: the decoders are exported once."""
    return tmp_path_factory.mktemp("sam-embed-data")


@pytest.fixture(scope="module")
def app(host, data_dir):
    server = start_app(data_dir, {"SAM_CORS_ORIGINS": host.origin, "SAM_EMBED_ORIGINS": host.origin})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predictor():
    from backend.sam import SamPredictor
    from backend.services.weights import random_model

    return SamPredictor(random_model().eval())


@pytest.fixture(scope="module")
def expected(predictor, app):
    """``expected(points, labels, box, multimask)`` -> (masks, scores) of the torch predictor on the server's
    own f32 embedding of the test image."""
    from backend.services.codec import decode_embedding

    buffer = io.BytesIO()
    Image.fromarray(coffee_pixels()).save(buffer, format="PNG")
    info = requests.post(app.url + "api/images", files={"image": ("coffee.png", buffer.getvalue())}, timeout=120)
    info = info.json()
    body = requests.get(app.url + f"api/embeddings/{info['id']}?format=f32", timeout=60).content
    predictor.set_embedding(decode_embedding(body), (info["height"], info["width"]))

    def run(points=None, labels=None, box=None, multimask=False):
        masks, scores, _ = predictor.predict(
            point_coords=None if points is None else np.array(points, dtype=np.float32),
            point_labels=None if labels is None else np.array(labels),
            box=None if box is None else np.array(box, dtype=np.float32),
            multimask_output=multimask,
        )
        return masks, scores

    return run


def new_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.console_watch = ConsoleWatch(page)
    page.goto(url)
    return page


@pytest.fixture
def open_page(browser):
    """``open_page(url)``: a fresh page; console errors fail the test unless allowed."""
    pages = []

    def make(url: str):
        page = new_page(browser, url)
        pages.append(page)
        return page

    yield make
    for page in pages:
        unexpected = page.console_watch.unexpected()
        page.context.close()
        assert not unexpected, f"console errors: {unexpected}"


def element_host(app_url: str) -> str:
    return f"""<!doctype html><meta charset="utf-8"><title>host</title>
<script type="module" src="{app_url}embed/sam-segmenter.js"></script>
<sam-segmenter id="sam" server="{app_url}"></sam-segmenter>
<script>
  window.samEvents = [];
  for (const type of ["sam-ready", "sam-mask", "sam-objects-changed", "sam-error"]) {{
    document.addEventListener(type, (event) => samEvents.push({{type, detail: event.detail}}));
  }}
</script>"""


@pytest.fixture(scope="module")
def host_pages(host, app):
    return {
        "plain": host.add("/plain.html", element_host(app.url)),
        "isolated": host.add("/isolated.html", element_host(app.url), **ISOLATION),
    }


def decode_rle(rle: dict) -> np.ndarray:
    from backend.sam.amg import decode_coco_counts, rle_to_mask

    return rle_to_mask({"size": rle["size"], "counts": decode_coco_counts(rle["counts"])})


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a == b).mean())


OPEN = "async (src) => { await customElements.whenDefined('sam-segmenter'); return document.getElementById('sam').open(src); }"
SEGMENT = "(prompt) => document.getElementById('sam').segment(prompt)"


def settle(page, script: str, arg=None) -> dict:
    """Runs an async script in the page; {ok, value} or {ok: false, message, code}."""
    return page.evaluate(
        f"""async (arg) => {{ try {{ return {{ok: true, value: await ({script})(arg)}}; }}
        catch (error) {{ return {{ok: false, message: error.message, code: error.code, name: error.name}}; }} }}""",
        arg,
    )


# ---------------------------------------------------------------------------------------------- the element


@pytest.mark.parametrize("kind", ["plain", "isolated"])
def test_element_from_another_origin_segments_like_the_torch_predictor(open_page, host, host_pages, expected, kind):
    page = open_page(host_pages[kind])
    assert page.evaluate("location.origin") == host.origin
    size = page.evaluate(OPEN, host.url + "images/coffee.png")
    assert size == {"width": 600, "height": 400}
    ready = page.evaluate("samEvents.filter((e) => e.type === 'sam-ready').map((e) => e.detail)")
    assert ready == [{"width": 600, "height": 400}]

    isolated = page.evaluate("crossOriginIsolated")
    info = page.evaluate("document.getElementById('sam').decoderInfo")
    assert isolated == (kind == "isolated")
    assert info["provider"] == "wasm"
    if kind == "isolated":
        assert info["threads"] > 1, info
    else:
        assert info["threads"] == 1, info

    point = {"points": [{"x": 300, "y": 200, "label": 1}], "box": None, "multimask": False}
    result = page.evaluate(SEGMENT, point)
    assert len(result["masks"]) == 1
    mask = decode_rle(result["masks"][0]["rle"])
    want, scores = expected([[300, 200]], [1])
    assert result["masks"][0]["rle"]["size"] == [400, 600]
    assert 0 < mask.sum() < mask.size  # a mask, not an empty or a full frame
    assert agreement(mask, want[0]) >= MIN_AGREEMENT
    assert result["masks"][0]["area"] == int(mask.sum())
    assert result["masks"][0]["score"] == pytest.approx(float(scores[0]), abs=0.02)

    box = {"points": [], "box": [100, 80, 450, 330], "multimask": False}
    result = page.evaluate(SEGMENT, box)
    want, _ = expected(box=[100, 80, 450, 330])
    assert agreement(decode_rle(result["masks"][0]["rle"]), want[0]) >= MIN_AGREEMENT

    both = {"points": [{"x": 200, "y": 150, "label": 1}, {"x": 420, "y": 300, "label": 0}], "multimask": True}
    result = page.evaluate(SEGMENT, both)
    want, scores = expected([[200, 150], [420, 300]], [1, 0], multimask=True)
    assert len(result["masks"]) == 3
    assert [m["score"] for m in result["masks"]] == sorted((m["score"] for m in result["masks"]), reverse=True)
    best = int(np.argmax(scores))
    assert agreement(decode_rle(result["masks"][0]["rle"]), want[best]) >= MIN_AGREEMENT


def test_keep_then_get_objects_gives_back_the_same_mask(open_page, host, host_pages):
    page = open_page(host_pages["plain"])
    page.evaluate(OPEN, host.url + "images/coffee.png")
    result = page.evaluate(SEGMENT, {"points": [{"x": 250, "y": 180, "label": 1}], "box": None})
    kept = page.evaluate("() => document.getElementById('sam').keep()")
    objects = page.evaluate("document.getElementById('sam').getObjects()")
    assert len(objects) == 1 and objects[0] == kept
    segmented = decode_rle(result["masks"][0]["rle"])
    assert np.array_equal(decode_rle(objects[0]["segmentation"]), segmented)
    assert objects[0]["area"] == int(segmented.sum())
    changed = page.evaluate("samEvents.filter((e) => e.type === 'sam-objects-changed').map((e) => e.detail)")
    assert changed == [{"objects": objects}]

    page.evaluate("document.getElementById('sam').clear()")
    assert page.evaluate("document.getElementById('sam').getObjects()") == []
    nothing = settle(page, "() => document.getElementById('sam').keep()")
    assert not nothing["ok"] and nothing["code"] == "no_mask"
    page.console_watch.allow.append("Nothing to keep")


def test_everything_streams_each_batch_and_resolves_the_servers_final_set(open_page, host, host_pages, app):
    page = open_page(host_pages["plain"])
    page.evaluate(OPEN, host.url + "images/coffee.png")
    options = {"pointsPerSide": 8, "predIouThresh": 0, "stabilityScoreThresh": 0, "boxNmsThresh": 0.7}
    run = page.evaluate(
        """async (options) => {
            const sam = document.getElementById('sam');
            const progress = [];
            sam.addEventListener('sam-everything-progress', (event) => progress.push(event.detail));
            const { masks } = await sam.everything(options);
            return { masks, progress };
        }""",
        options,
    )
    progress, masks = run["progress"], run["masks"]
    # 64 points in batches of 4, 16, 32 and 12: an event for each batch that changed the set, as it came.
    assert len(progress) >= 2 and [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    for event in progress:
        assert {m["id"] for m in event["masks"]} >= {m["id"] for m in event["added"]}
        assert not {m["id"] for m in event["masks"]} & set(event["removed"])
    counts = sorted(m["rle"]["counts"] for m in masks)
    assert sorted(m["rle"]["counts"] for m in progress[-1]["masks"]) == counts

    # The final set is the server's job result for the same image and parameters (the same, cached job).
    buffer = io.BytesIO()
    Image.fromarray(coffee_pixels()).save(buffer, format="PNG")
    image_id = requests.post(app.url + "api/images", files={"image": ("c.png", buffer.getvalue())}, timeout=120).json()[
        "id"
    ]
    parameters = {"points_per_side": 8, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 0.7}
    job = requests.post(app.url + f"api/images/{image_id}/everything", json=parameters, timeout=30).json()
    assert job["cached"]
    annotations = requests.get(app.url + job["status_url"].lstrip("/"), timeout=30).json()["result"]["annotations"]
    assert counts == sorted(a["segmentation"]["counts"] for a in annotations) and len(masks) >= 1
    first = masks[0]
    assert decode_rle(first["rle"]).sum() == first["area"] and len(first["bbox"]) == 4 and len(first["point"]) == 2

    bad = settle(page, "(options) => document.getElementById('sam').everything(options)", {"pointz": 3})
    assert not bad["ok"] and bad["code"] == "bad_options" and "pointsPerSide" in bad["message"]
    page.console_watch.allow.append("Unknown everything() option")


def pixel_position(page, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of the centre of image pixel (x, y) inside the element."""
    canvas = page.locator("#sam .stage .masks")
    box = canvas.bounding_box()
    width, height = canvas.evaluate("(c) => [c.width, c.height]")
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def user_masks(page, count: int) -> list[dict]:
    """The details of the first ``count`` sam-mask events (waits for them)."""
    page.wait_for_function(f"samEvents.filter((e) => e.type === 'sam-mask').length >= {count}")
    return page.evaluate("samEvents.filter((e) => e.type === 'sam-mask').map((e) => e.detail)")[:count]


def test_the_user_edits_inside_the_element_as_in_the_app(open_page, host, host_pages, expected):
    page = open_page(host_pages["plain"])
    page.evaluate(OPEN, host.url + "images/coffee.png")
    # Hover previews a mask (no event: it is not made yet), a real click makes it: three candidates, best first.
    page.mouse.move(*pixel_position(page, 300, 200))
    page.wait_for_function("performance.getEntriesByName('sam:hover-to-paint').length > 0")
    assert page.evaluate("samEvents.filter((e) => e.type === 'sam-mask').length") == 0
    page.mouse.click(*pixel_position(page, 300, 200))
    [clicked] = user_masks(page, 1)
    want, scores = expected([[300, 200]], [1], multimask=True)
    best = int(np.argmax(scores))
    assert len(clicked["masks"]) == 3
    assert agreement(decode_rle(clicked["masks"][0]["rle"]), want[best]) >= MIN_AGREEMENT

    # The candidates are offered; picking another one (a click on it) makes that the mask.
    candidates = page.locator("#sam .candidate-list button")
    assert candidates.count() == 3
    other = (best + 1) % 3
    candidates.nth(other).click()
    [_, picked] = user_masks(page, 2)
    assert agreement(decode_rle(picked["masks"][0]["rle"]), want[other]) >= MIN_AGREEMENT
    assert candidates.nth(other).get_attribute("aria-checked") == "true"

    # Undo empties the prompts again; a dragged box gives the predictor's box mask.
    page.locator("#sam [data-action=undo]").click()
    page.wait_for_function("!document.getElementById('sam').shadowRoot.querySelector('svg circle')")
    start, end = pixel_position(page, 100, 80), pixel_position(page, 450, 330)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + 20, start[1] + 20, steps=2)
    page.mouse.move(*end, steps=4)
    page.mouse.up()
    boxed = user_masks(page, 3)[-1]
    want_box, _ = expected(box=[100, 80, 450, 330])
    assert len(boxed["masks"]) == 1
    assert agreement(decode_rle(boxed["masks"][0]["rle"]), want_box[0]) >= MIN_AGREEMENT

    # Keep (the button) makes it an object; getObjects() gives back the same mask.
    page.mouse.move(2, 2)
    page.locator("#sam [data-action=keep]").click()
    page.wait_for_function("samEvents.some((e) => e.type === 'sam-objects-changed')")
    objects = page.evaluate("document.getElementById('sam').getObjects()")
    assert len(objects) == 1
    assert np.array_equal(decode_rle(objects[0]["segmentation"]), decode_rle(boxed["masks"][0]["rle"]))


def test_compact_shows_the_image_and_minimal_controls(open_page, host, app):
    html = element_host(app.url).replace('<sam-segmenter id="sam"', '<sam-segmenter id="sam" compact')
    page = open_page(host.add("/compact.html", html))
    page.evaluate(OPEN, host.url + "images/coffee.png")
    assert page.locator("#sam .stage .masks").is_visible()
    assert page.locator("#sam [data-action=undo]").is_visible()
    assert page.locator("#sam [data-action=keep]").is_visible()
    for hidden in ("[data-action=redo]", "[data-action=reset]", "[data-action=negative]", ".status"):
        assert not page.locator(f"#sam {hidden}").is_visible(), hidden
    full = open_page(host.url + "plain.html")
    full.evaluate(OPEN, host.url + "images/coffee.png")
    assert full.locator("#sam [data-action=redo]").is_visible()
    assert full.locator("#sam .status").is_visible()


def test_cross_origin_load_is_refused_without_cors_origins(open_page, host, app, data_dir):
    closed = start_app(data_dir, {})
    try:
        url = host.add("/closed.html", element_host(closed.url))
        page = open_page(url)
        page.console_watch.allow.extend(["CORS policy", "Failed to load resource", "net::ERR_FAILED"])
        page.wait_for_load_state("load")
        assert page.evaluate("customElements.get('sam-segmenter') === undefined")
        refused = settle(page, f"() => fetch('{closed.url}api/model').then((r) => r.status)")
        assert not refused["ok"]  # TypeError: the browser refuses to read the answer
        assert (
            requests.get(closed.url + "api/model", headers={"Origin": host.origin}, timeout=10).headers.get(
                "Access-Control-Allow-Origin"
            )
            is None
        )
    finally:
        closed.stop()


# ---------------------------------------------------------------------------------------------- bad input


def test_open_rejects_bad_input_in_words(open_page, host, host_pages):
    page = open_page(host_pages["plain"])
    page.console_watch.allow.extend(["Failed to load resource", "net::ERR_CONNECTION_REFUSED"])
    page.evaluate("customElements.whenDefined('sam-segmenter').then(() => true)")

    not_image = settle(page, "(src) => document.getElementById('sam').open(src)", host.url + "images/notes.txt")
    assert not not_image["ok"] and not_image["code"] == "not_an_image", not_image
    assert "not an image" in not_image["message"]

    closed_port = free_port()
    unreachable = settle(
        page, "(src) => document.getElementById('sam').open(src)", f"http://127.0.0.1:{closed_port}/photo.png"
    )
    assert not unreachable["ok"] and unreachable["code"] == "unreachable", unreachable
    assert "cannot be downloaded" in unreachable["message"]

    too_large = settle(page, "(src) => document.getElementById('sam').open(src)", host.url + "images/large.png")
    assert not too_large["ok"] and too_large["code"] == "too_large", too_large
    assert too_large["message"] == (
        "The server refused the image: the image is 800x800 = 640,000 pixels; the limit is 300,000"
    ), too_large

    errors = page.evaluate("samEvents.filter((e) => e.type === 'sam-error').map((e) => e.detail)")
    assert [e["code"] for e in errors] == ["not_an_image", "unreachable", "too_large"]
    assert [e["message"] for e in errors] == [not_image["message"], unreachable["message"], too_large["message"]]
    assert page.evaluate("samEvents.filter((e) => e.type === 'sam-ready').length") == 0


OPEN_DRAWABLE = """async ([url, kind]) => {
  await customElements.whenDefined('sam-segmenter');
  const bitmap = await createImageBitmap(await (await fetch(url)).blob());
  let source = bitmap;
  if (kind === 'img') {
    source = new Image();
    source.src = url;
  } else if (kind !== 'ImageBitmap') {
    source = kind === 'canvas' ? document.createElement('canvas') : new OffscreenCanvas(1, 1);
    [source.width, source.height] = [bitmap.width, bitmap.height];
    source.getContext('2d').drawImage(bitmap, 0, 0);
  }
  return document.getElementById('sam').open(source);
}"""


@pytest.mark.parametrize("kind", ["ImageBitmap", "img", "canvas", "OffscreenCanvas"])
def test_open_takes_pixels_already_on_the_page(open_page, host, host_pages, expected, kind):
    page = open_page(host_pages["plain"])
    size = page.evaluate(OPEN_DRAWABLE, [host.url + "images/coffee.png", kind])
    assert size == {"width": 600, "height": 400}
    result = page.evaluate(SEGMENT, {"points": [{"x": 300, "y": 200, "label": 1}], "box": None, "multimask": False})
    mask = decode_rle(result["masks"][0]["rle"])
    want, _ = expected([[300, 200]], [1])
    assert 0 < mask.sum() < mask.size
    assert agreement(mask, want[0]) >= MIN_AGREEMENT


def test_open_refuses_a_cross_origin_img_it_may_not_read(open_page, host_pages, stranger):
    stranger.add_image("/images/private.png", coffee_pixels())  # served without CORS
    page = open_page(host_pages["plain"])
    script = """async (url) => {
      await customElements.whenDefined('sam-segmenter');
      const img = new Image();
      img.src = url;
      try { return {ok: true, value: await document.getElementById('sam').open(img)}; }
      catch (error) { return {ok: false, code: error.code, message: error.message}; }
    }"""
    answer = page.evaluate(script, stranger.url + "images/private.png")
    assert answer == {
        "ok": False,
        "code": "not_an_image",
        "message": "The browser does not let this page read that image's pixels (a cross-origin image without CORS).",
    }
    page.console_watch.allow.append("cross-origin image without CORS")


def test_an_unknown_decoder_name_is_refused(open_page, host, app):
    html = element_host(app.url).replace('<sam-segmenter id="sam"', '<sam-segmenter id="sam" decoder="nope"')
    page = open_page(host.add("/unknown-decoder.html", html))
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    answer = settle(page, OPEN, host.url + "images/coffee.png")
    assert not answer["ok"] and answer["code"] == "unknown_decoder", answer
    assert (
        answer["message"].startswith('The server has no decoder named "nope" (it offers: ')
        and "lowres" in answer["message"]
    )
    assert not [url for url in requested if "/models/" in url or ".wasm" in url], "refused only after a download"


def test_segment_before_open_and_points_outside_the_image_are_rejected(open_page, host, host_pages):
    page = open_page(host_pages["plain"])
    page.evaluate("customElements.whenDefined('sam-segmenter').then(() => true)")
    early = settle(page, SEGMENT, {"points": [{"x": 1, "y": 1, "label": 1}]})
    assert not early["ok"] and early["code"] == "not_open"
    assert "open()" in early["message"]

    page.evaluate(OPEN, host.url + "images/coffee.png")
    for prompt, code, words in [
        ({"points": [{"x": 600, "y": 10, "label": 1}]}, "outside_image", "outside the 600×400 image"),
        ({"points": [{"x": -1, "y": 10, "label": 1}]}, "outside_image", "outside"),
        ({"points": [{"x": 10, "y": 400, "label": 1}]}, "outside_image", "outside"),
        ({"points": [], "box": [10, 10, 700, 300]}, "outside_image", "reaches outside"),
        ({"points": [{"x": 10, "y": 10, "label": 2}]}, "bad_prompt", "label"),
        ({"points": []}, "bad_prompt", "at least one point"),
    ]:
        answer = settle(page, SEGMENT, prompt)
        assert not answer["ok"] and answer["code"] == code, (prompt, answer)
        assert words in answer["message"], answer
    codes = page.evaluate("samEvents.filter((e) => e.type === 'sam-error').map((e) => e.detail.code)")
    assert codes == [
        "not_open",
        "outside_image",
        "outside_image",
        "outside_image",
        "outside_image",
        "bad_prompt",
        "bad_prompt",
    ]


# ---------------------------------------------------------------------------------------------- the iframe


def iframe_host(app_url: str, query: str = "", allow: str = "") -> str:
    return f"""<!doctype html><meta charset="utf-8"><title>iframe host</title>
<iframe id="sam" src="{app_url}embed{query}" width="800" height="600" allow="{allow}"></iframe>
<script>
  window.samMessages = [];
  window.addEventListener("message", (event) => {{
    if (event.origin === "{app_url.rstrip("/")}") samMessages.push(event.data);
  }});
  window.ask = (message) => new Promise((resolve) => {{
    const id = Math.random().toString(36).slice(2);
    const listen = (event) => {{
      if (event.data && event.data.id === id) {{ removeEventListener("message", listen); resolve(event.data); }}
    }};
    addEventListener("message", listen);
    document.getElementById("sam").contentWindow.postMessage({{...message, id}}, "{app_url.rstrip("/")}");
  }});
</script>"""


def test_iframe_protocol_round_trips(open_page, host, app):
    page = open_page(host.add("/iframe.html", iframe_host(app.url)))
    page.wait_for_function("document.getElementById('sam').contentWindow && true")
    page.frame_locator("#sam").locator("sam-segmenter").wait_for(state="attached")
    ready = page.evaluate("(url) => ask({type: 'sam:open', image: url})", host.url + "images/coffee.png")
    assert ready["type"] == "sam:ready" and (ready["width"], ready["height"]) == (600, 400), ready

    mask = page.evaluate("ask({type: 'sam:segment', points: [{x: 300, y: 200, label: 1}], box: null})")
    assert mask["type"] == "sam:mask" and len(mask["masks"]) == 1
    kept = page.evaluate("ask({type: 'sam:keep'})")
    assert kept["type"] == "sam:objects" and len(kept["objects"]) == 1
    assert np.array_equal(decode_rle(kept["objects"][0]["segmentation"]), decode_rle(mask["masks"][0]["rle"]))
    cleared = page.evaluate("ask({type: 'sam:clear'})")
    assert cleared == {"type": "sam:objects", "objects": [], "id": cleared["id"]}

    error = page.evaluate("ask({type: 'sam:segment', points: [{x: 5000, y: 1, label: 1}]})")
    assert error["type"] == "sam:error" and error["code"] == "outside_image" and "outside" in error["message"]
    unknown = page.evaluate("ask({type: 'sam:dance'})")
    assert unknown["type"] == "sam:error" and unknown["code"] == "unknown_message"

    # A Blob travels too (structured clone).
    blob_ready = page.evaluate(
        """async (url) => { const blob = await (await fetch(url)).blob(); return ask({type: 'sam:open', image: blob}); }""",
        host.url + "images/coffee.png",
    )
    assert blob_ready["type"] == "sam:ready" and blob_ready["width"] == 600
    # Replies only: nothing arrived unasked.
    assert all(m.get("id") for m in page.evaluate("samMessages")), page.evaluate("samMessages")


def test_iframe_in_an_isolated_host_runs_threads(open_page, host, app):
    html = iframe_host(app.url, allow="cross-origin-isolated")
    page = open_page(host.add("/iframe-isolated.html", html, **ISOLATION))
    assert page.evaluate("crossOriginIsolated")
    page.frame_locator("#sam").locator("sam-segmenter").wait_for(state="attached")
    ready = page.evaluate("(url) => ask({type: 'sam:open', image: url})", host.url + "images/coffee.png")
    assert ready["type"] == "sam:ready", ready
    frame = next(f for f in page.frames if f.url.startswith(app.url))
    assert frame.evaluate("crossOriginIsolated")
    assert frame.evaluate("document.querySelector('sam-segmenter').decoderInfo.threads") > 1


def test_iframe_image_parameter_opens_directly(open_page, host, app):
    query = "?image=" + quote(host.url + "images/coffee.png", safe="")
    page = open_page(host.add("/iframe-image.html", iframe_host(app.url, query)))
    page.wait_for_function("samMessages.some((m) => m.type === 'sam:ready')")
    ready = next(m for m in page.evaluate("samMessages") if m["type"] == "sam:ready")
    assert (ready["width"], ready["height"], ready["id"]) == (600, 400, None)
    # The user's own click inside the frame reaches the host unasked.
    canvas = page.frame_locator("#sam").locator("sam-segmenter .stage .masks")
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("samMessages.some((m) => m.type === 'sam:mask')")
    mask = next(m for m in page.evaluate("samMessages") if m["type"] == "sam:mask")
    assert mask["id"] is None and len(mask["masks"]) == 3 and mask["masks"][0]["rle"]["size"] == [400, 600]


def test_iframe_ignores_messages_from_disallowed_origins(open_page, host, stranger, app):
    # The host (allowed) frames the app and a stranger's frame (another origin) that tries to drive it.
    stranger.add(
        "/stranger.html",
        """<!doctype html><script>
        window.attack = (type) => parent.frames[0].postMessage({type, id: type, points: [{x: 1, y: 1, label: 1}]}, "*");
        </script>""",
    )
    page_html = iframe_host(app.url) + f'<iframe id="stranger" src="{stranger.url}stranger.html"></iframe>'
    page = open_page(host.add("/iframe-stranger.html", page_html))
    page.frame_locator("#sam").locator("sam-segmenter").wait_for(state="attached")
    page.evaluate("(url) => ask({type: 'sam:open', image: url})", host.url + "images/coffee.png")
    page.evaluate("ask({type: 'sam:segment', points: [{x: 300, y: 200, label: 1}]})")
    kept = page.evaluate("ask({type: 'sam:keep'})")
    assert len(kept["objects"]) == 1

    warnings = []
    page.on("console", lambda message: message.type == "warning" and warnings.append(message.text))
    stranger_frame = next(f for f in page.frames if f.url.startswith(stranger.url))
    for type_ in ("sam:clear", "sam:clear", "sam:open", "sam:keep"):
        stranger_frame.evaluate(f"attack('{type_}')")
    page.wait_for_timeout(1000)
    # Nothing changed: the object is still there, and the stranger got no answer.
    after = page.evaluate("ask({type: 'sam:segment', points: [{x: 300, y: 200, label: 1}]})")
    assert after["type"] == "sam:mask"
    still = page.evaluate("ask({type: 'sam:keep'})")
    assert len(still["objects"]) == 2
    ignored = [w for w in warnings if "ignored messages from" in w]
    assert ignored == [
        f"sam-segmenter: ignored messages from {stranger.origin}: it is not in the server's SAM_EMBED_ORIGINS"
    ]


# ---------------------------------------------------------------------------------------------- misc


def test_embed_page_refuses_framing_by_unlisted_origins(app, stranger):
    answer = requests.get(app.url + "embed", timeout=10)
    policy = answer.headers["Content-Security-Policy"]
    assert policy.startswith("frame-ancestors 'self' ") and stranger.origin not in policy
    assert re.search(r"\bhttp://127\.0\.0\.1:\d+\b", policy)


# ---------------------------------------------------------------------------------------------- the docs


def recipe(name: str, document: str = "docs/embedding.md") -> str:
    """The code block after ``<!-- recipe:<name> -->`` in docs/embedding.md (or the README)."""
    text = (REPO_ROOT / document).read_text()
    match = re.search(rf"<!-- recipe:{name} -->\n```html\n(.*?)```", text, re.S)
    assert match, f"{document} lost its {name} recipe"
    return match.group(1)


def pasted(code: str, app, host) -> str:
    """A recipe as a user pastes it into a blank page, with the two placeholder origins made real."""
    placeholders = {"https://sam.example.org": app.url.rstrip("/"), "https://your.tool": host.origin}
    for placeholder, real in placeholders.items():
        code = code.replace(placeholder, real).replace(quote(placeholder, safe=""), quote(real, safe=""))
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body>\n{code}</body></html>"


def console_lines(page, prefix: str, count: int = 1) -> list[str]:
    """The console lines starting with ``prefix``, once there are ``count`` (or two minutes passed)."""
    lines = page.console_lines
    for _ in range(480):
        if sum(line.startswith(prefix) for line in lines) >= count:
            break
        page.wait_for_timeout(250)
    return [line for line in lines if line.startswith(prefix)]


@pytest.fixture
def recipe_page(open_page, host, app):
    host.add_image("/photo.png", coffee_pixels())

    def make(name: str, document: str = "docs/embedding.md"):
        url = host.add(f"/recipe-{name}-{len(document)}.html", pasted(recipe(name, document), app, host))
        context_page = open_page("about:blank")
        context_page.console_lines = []
        context_page.on("console", lambda message: context_page.console_lines.append(message.text))
        context_page.goto(url)
        return context_page

    return make


def test_element_recipe_works_in_a_blank_page(recipe_page):
    page = recipe_page("element")
    [mask_line] = console_lines(page, "mask ")
    score, area, length = mask_line.split()[1:]
    assert 0 < int(area) < 600 * 400 and int(length) > 0
    [objects_line] = console_lines(page, "objects ")
    objects = json.loads(objects_line.removeprefix("objects "))
    assert len(objects) == 1 and objects[0]["area"] == int(area)
    assert objects[0]["segmentation"]["size"] == [400, 600]


def test_readme_element_recipe_works_in_a_blank_page(recipe_page):
    page = recipe_page("element", "README.md")
    [mask_line] = console_lines(page, "mask ")
    score, area = mask_line.split()[1:]
    assert 0 < int(area) < 600 * 400 and -1 < float(score) < 2


def test_readme_curl_recipe(app, tmp_path):
    text = (REPO_ROOT / "README.md").read_text()
    [command] = re.findall(r"`(curl -F image=@photo\.png https://sam\.example\.org/api/images)`", text)
    Image.fromarray(coffee_pixels()).save(tmp_path / "photo.png")
    argv = command.replace("https://sam.example.org/", app.url).split()
    answer = json.loads(subprocess.run(argv, cwd=tmp_path, capture_output=True, check=True, timeout=120).stdout)
    assert (answer["width"], answer["height"]) == (600, 400) and answer["embedding_url"].startswith("/api/embeddings/")


def test_iframe_recipe_works_in_a_blank_page(recipe_page):
    page = recipe_page("iframe")
    [mask_line] = console_lines(page, "mask ")
    assert int(mask_line.split()[1]) > 0
    assert console_lines(page, "objects ") == ["objects 1"]


def test_http_recipe_works_in_a_blank_page(recipe_page):
    page = recipe_page("http")
    [line] = console_lines(page, "encoded ")
    assert line.split()[1:] == ["600", "400", str(16 + 4 * 256 + 256 * 64 * 64), "lowres-quantized"]  # int8 default


def test_example_page_is_served_by_the_app_and_not_linked(app):
    assert requests.get(app.url + "examples/host.html", timeout=10).status_code == 200
    assert "examples" not in requests.get(app.url, timeout=10).text


def test_example_host_page_from_another_origin(open_page, host, app, tmp_path):
    host.add("/host.html", (REPO_ROOT / "web" / "examples" / "host.html").read_text())
    page = open_page(f"{host.url}host.html?server={quote(app.url, safe='')}")
    path = tmp_path / "coffee.png"
    Image.fromarray(coffee_pixels()).save(path)
    page.wait_for_function("customElements.get('sam-segmenter') !== undefined")
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('sam').imageSize !== null")
    page.evaluate("document.getElementById('sam').segment({points: [{x: 300, y: 200, label: 1}]})")
    page.evaluate("document.getElementById('sam').keep()")
    page.wait_for_function("document.getElementById('count').textContent.startsWith('1 object')")
    objects = json.loads(page.inner_text("#objects"))
    assert len(objects) == 1 and objects[0]["segmentation"]["size"] == [400, 600]
    with page.expect_download() as download:
        page.click("#download")
    coco = json.loads(Path(download.value.path()).read_text())
    assert coco["images"][0] == {"id": 1, "file_name": "coffee.png", "width": 600, "height": 400}
    assert coco["annotations"] == objects
