"""The page served on SAM 2.1, end to end in Chromium: a real click's mask equals SAM2ImagePredictor's.

The app runs in this process (werkzeug on a loopback port) on the seeded small SAM 2.1 of
backend_fixtures.small_sam2 (a reduced Hiera trunk; decoder and wire shapes as sam2.1_hiera_t), with its decoders
exported as `create_app` does for any SAM 2 model. The page is the one users get: upload through the file picker,
the version-2 embedding bundle (codec default), the default decoder, a click on the canvas.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests
from backend_fixtures import SMALL_PHOTO, photo_jpeg, small_sam2
from browser_helpers import ConsoleWatch, click_and_leave, leave_image, shown_mask, upload
from werkzeug.serving import make_server

from backend.sam2 import SAM2ImagePredictor
from backend.services.codec import SAM2_DEFAULT_FORMAT, decode_sam2_features
from backend.services.weights import WeightsInfo

pytestmark = pytest.mark.timeout(300)

# The default decoder (weight-only int8) on the default bundle agrees with the predictor on 99.32-99.60 % of
# these random-weight masks (tests/browser/test_sam2_decoder.py).
MIN_AGREEMENT = 0.99
CLICK = (420, 250)


@pytest.fixture(scope="module")
def sam2_server(tmp_path_factory):
    from backend.server.app import create_app

    model = small_sam2()
    app = create_app(
        {
            "model": model,
            "weights_info": WeightsInfo("sam2.1_hiera_t", "random", "small-sam2-seed0-page", None, "small SAM 2.1"),
            "data_dir": str(tmp_path_factory.mktemp("sam2-page-data")),
            "device": "cpu",
            "precision": "fp32",
            "secret": "test-secret",
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_port}/", "model": model}
    finally:
        server.shutdown()
        app.extensions["sam"].encoder.close()
        app.extensions["everything"].close()


@pytest.fixture
def sam2_page(browser, sam2_server):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(90_000)
    watch = ConsoleWatch(page)
    page.goto(sam2_server["url"] + "?backend=wasm")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.decoder)")
    assert page.evaluate("document.body.dataset.decoder") == "ready", page.inner_text("#error-text")
    yield page
    context.close()
    assert not watch.unexpected(), f"console errors: {watch.unexpected()}"


def test_a_click_on_the_sam2_page_gives_the_predictors_mask(sam2_page, sam2_server):
    page = sam2_page
    image_path = photo_jpeg(*SMALL_PHOTO)
    with page.expect_response(lambda r: "/api/embeddings/" in r.url) as embedding:
        upload(page, image_path)
    assert f"format={SAM2_DEFAULT_FORMAT}" in embedding.value.url
    leave_image(page)
    click_and_leave(page, *CLICK)

    # The predictor on the server's own features of this upload (float32 bundle).
    info = requests.post(sam2_server["url"] + "api/images", files={"image": image_path.open("rb")}, timeout=120).json()
    assert info["model_family"] == "sam2.1" and info["cache_hit"]
    features = decode_sam2_features(
        requests.get(sam2_server["url"] + f"api/embeddings/{info['id']}?format=f32", timeout=60).content
    )
    predictor = SAM2ImagePredictor(sam2_server["model"])
    predictor.set_features(
        {
            "image_embed": features["image_embed"][None],
            "high_res_feats": [features["high_res_feats_0"][None], features["high_res_feats_1"][None]],
        },
        (info["height"], info["width"]),
    )
    masks, scores, _ = predictor.predict(np.array([CLICK], np.float32), np.array([1]), multimask_output=True)
    expected = masks[int(np.argmax(scores))].astype(bool)
    shown = shown_mask(page)
    assert shown.shape == expected.shape
    assert 0 < expected.sum() < expected.size  # the comparison is not between two empty (or full) masks
    assert (shown == expected).mean() >= MIN_AGREEMENT
