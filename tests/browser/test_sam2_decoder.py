"""The page's decoder worker on SAM 2.1: the click's mask Chromium computes equals SAM2ImagePredictor's.

The seeded small SAM 2.1 (backend_fixtures.small_sam2) encodes a photo in this process; its three tensors go to
the worker in the version-2 wire format (backend/services/codec.py) and its decoders as the server exports them
(backend/services/decoders.py). A static server (browser_helpers.static_server) serves them beside the page's
own DecoderClient, worker, embedding.js, sam2-inputs.js and mask-math.js and onnxruntime-web.
"""

from __future__ import annotations

import numpy as np
import pytest
from backend_fixtures import SMALL_PHOTO, photo, small_sam2
from browser_helpers import ConsoleWatch, static_server

from backend.sam2 import SAM2ImagePredictor
from backend.services.codec import SAM2_DEFAULT_FORMAT, encode_sam2_features
from backend.services.decoders import prepare_decoders

# The fp32 decoders on float32 features compute the predictor's logits up to float rounding (and lowres's tanh
# GELU): >= 99.99 %. The default decoder (weight-only int8) on the default wire format adds their rounding to
# these random-weight masks (speckled, logits near 0 everywhere): 99.32-99.60 % when this bound was set.
EXACT_AGREEMENT = 0.99
DEFAULT_AGREEMENT = 0.99
# Click positions in image pixels (x, y) of the 800x534 photo, and boxes (x0, y0, x1, y1).
CLICKS = [(400.0, 267.0), (250.0, 150.0)]
BOX = (120.0, 80.0, 640.0, 460.0)


@pytest.fixture(scope="module")
def sam2_case(tmp_path_factory):
    model = small_sam2()
    image = photo(*SMALL_PHOTO)
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(image)
    features = {
        "image_embed": predictor._features["image_embed"].numpy(),
        "high_res_feats_0": predictor._features["high_res_feats"][0].numpy(),
        "high_res_feats_1": predictor._features["high_res_feats"][1].numpy(),
    }
    files = tmp_path_factory.mktemp("sam2-files")
    decoders = prepare_decoders(model, "small-sam2-seed0-test", tmp_path_factory.mktemp("sam2-decoders"))
    for decoder in decoders:
        (files / f"{decoder['name']}.onnx").write_bytes(decoder["path"].read_bytes())
    for fmt in ("f32", SAM2_DEFAULT_FORMAT):
        (files / f"features-{fmt}.bin").write_bytes(encode_sam2_features(features, fmt))
    (files / "index.html").write_text("<!doctype html><link rel=icon href=data:,><title>SAM 2 decoder</title>")
    with static_server({"/sam2-test/": files}) as url:
        yield {"predictor": predictor, "image_hw": list(image.shape[:2]), "url": url}


@pytest.fixture
def sam2_page(browser, sam2_case):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(90_000)
    watch = ConsoleWatch(page)
    page.goto(sam2_case["url"] + "sam2-test/index.html")
    yield page
    context.close()
    assert not watch.unexpected(), f"console errors: {watch.unexpected()}"


def decode_in_browser(page, case, decoder: str, wire: str, prompts: list[dict]) -> list[dict]:
    """Runs the page's DecoderClient on `decoder` with the `wire` bundle; per prompt the mask (flat 0/1),
    the best candidate and the interface the worker reports."""
    return page.evaluate(
        """async ({ imageHw, prompts, decoder, wire }) => {
        const { DecoderClient } = await import('/js/decoder/decoder-client.js');
        const client = new DecoderClient();
        const info = await client.init(`/sam2-test/${decoder}.onnx`, 'wasm');
        const buffer = await (await fetch(`/sam2-test/features-${wire}.bin`)).arrayBuffer();
        const ready = await client.setEmbedding(buffer, imageHw);
        const out = [];
        let previous = null;
        for (const prompt of prompts) {
            const maskInput = prompt.refine ? previous.lowRes.slice(previous.best * 65536, (previous.best + 1) * 65536) : null;
            const result = await client.decode({ ...prompt, maskInput, outSize: imageHw });
            previous = result;
            out.push({ mask: Array.from(result.masks[result.best]), best: result.best, interface: info.interface,
                       dtype: ready.dtype });
        }
        client.terminate();
        return out; }""",
        {"imageHw": case["image_hw"], "prompts": prompts, "decoder": decoder, "wire": wire},
    )


def predictor_masks(predictor, prompts: list[dict]) -> list[np.ndarray]:
    """The predictor's mask for each prompt as the page picks it (the candidate with the best IoU)."""
    out, previous = [], None
    for prompt in prompts:
        kwargs = {"multimask_output": prompt["multimask"]}
        if prompt["points"]:
            kwargs["point_coords"] = np.array([[p["x"], p["y"]] for p in prompt["points"]], np.float32)
            kwargs["point_labels"] = np.array([p["label"] for p in prompt["points"]])
        if prompt["box"]:
            kwargs["box"] = np.array(prompt["box"], np.float32)
        if prompt.get("refine"):
            kwargs["mask_input"] = previous
        masks, iou, low_res = predictor.predict(**kwargs)
        best = int(np.argmax(iou))
        previous = low_res[best][None]
        out.append(masks[best].astype(bool))
    return out


PROMPTS = [
    # A click (the page's candidates), two clicks (a single mask), a box, and the clicks refined with the
    # previous mask.
    {"points": [{"x": CLICKS[0][0], "y": CLICKS[0][1], "label": 1}], "box": None, "multimask": True},
    {
        "points": [{"x": x, "y": y, "label": 1} for x, y in CLICKS],
        "box": None,
        "multimask": False,
    },
    {"points": [], "box": list(BOX), "multimask": False},
    {
        "points": [{"x": x, "y": y, "label": 1} for x, y in CLICKS],
        "box": None,
        "multimask": False,
        "refine": True,
    },
]


@pytest.mark.parametrize(
    ("decoder", "wire", "agreement"),
    [
        ("lowres", "f32", EXACT_AGREEMENT),
        ("official", "f32", EXACT_AGREEMENT),
        ("lowres-quantized", SAM2_DEFAULT_FORMAT, DEFAULT_AGREEMENT),
    ],
)
def test_sam2_masks_in_chromium_equal_the_predictors(sam2_page, sam2_case, decoder, wire, agreement):
    results = decode_in_browser(sam2_page, sam2_case, decoder, wire, PROMPTS)
    expected = predictor_masks(sam2_case["predictor"], PROMPTS)
    height, width = sam2_case["image_hw"]
    assert results[0]["interface"] == f"sam2-{decoder.split('-')[0]}"
    for prompt, result, mask in zip(PROMPTS, results, expected, strict=True):
        shown = np.array(result["mask"], dtype=bool).reshape(height, width)
        share = (shown == mask).mean()
        print(f"{decoder} on {wire}: {share:.4f} of pixels as the predictor's for {prompt}")
        assert share >= agreement, (prompt, share)
        # A mask, not an empty or full image (either would agree on most pixels by chance less often).
        assert 0.02 < mask.mean() < 0.98
