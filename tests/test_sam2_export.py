"""The SAM 2 decoder exported to ONNX (public SAM 2 interface) computes what SAM2ImagePredictor computes, in
float32 and in its weight-only int8 copy, and is no larger than the SAM 1 decoder."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from backend.sam2 import SAM2ImagePredictor, build_sam2
from model_export import QUANTIZATION_RECIPES, decoder_session_options, quantize_decoder
from model_export.sam2_model import SAM2_INPUT_NAMES, SAM2_OUTPUT_NAMES, export_sam2_decoder

TINY_CONFIG = {
    "base": "sam2.1_hiera_t",
    "trunk": {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
    "neck": {"backbone_channel_list": [64, 32, 16, 8]},
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_sam2(TINY_CONFIG)
    # Random single-mask weights give unstable masks; scaled, token 0 is kept for some prompts (as in the
    # reference data), so the test sees both branches of the stability fallback the caller applies.
    with torch.no_grad():
        model.sam_mask_decoder.output_hypernetworks_mlps[0].layers[2].weight.mul_(30)
    image = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(image)
    return model, predictor, image


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sam2-decoders")
    fp32 = export_sam2_decoder(tiny[0], directory / "sam2.onnx")
    quantized = quantize_decoder(fp32, directory / "sam2-quantized.onnx", **QUANTIZATION_RECIPES["weight-only"])
    return fp32, quantized


def feeds(predictor, image, points, labels, mask_input=None):
    """The graph's inputs for a prompt in image pixels: scaled per axis, with the padding point SAM 2 always adds."""
    height, width = image.shape[:2]
    coords = np.concatenate([np.asarray(points, np.float32) * [1024 / width, 1024 / height], [[0.0, 0.0]]])
    features = predictor._features
    return {
        "image_embed": features["image_embed"].numpy(),
        "high_res_feats_0": features["high_res_feats"][0].numpy(),
        "high_res_feats_1": features["high_res_feats"][1].numpy(),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([[*labels, -1]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32) if mask_input is None else mask_input[None],
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
    }


PROMPTS = [
    ([[20.0, 30.0]], [1]),
    ([[5.0, 5.0], [60.0, 40.0]], [1, 0]),
    ([[10.0, 8.0], [50.0, 40.0]], [2, 3]),  # a box, as its two corners
]


def test_the_graph_has_the_public_interface(exported):
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(SAM2_INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(SAM2_OUTPUT_NAMES)


@pytest.mark.parametrize(("points", "labels"), PROMPTS)
def test_exported_decoder_equals_the_predictor(tiny, exported, points, labels):
    _, predictor, image = tiny
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    masks, iou, low_res = session.run(None, feeds(predictor, image, points, labels))
    assert masks.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
    assert np.array_equal(low_res, np.clip(masks, -32, 32))

    is_box = labels == [2, 3]
    kwargs = (
        {"box": np.ravel(points)} if is_box else {"point_coords": np.array(points), "point_labels": np.array(labels)}
    )
    _, expected_iou, expected_low = predictor.predict(multimask_output=True, **kwargs)
    assert np.abs(iou[0, 1:] - expected_iou).max() <= 1e-4
    assert np.abs(low_res[0, 1:] - expected_low).max() <= 1e-3
    # Single mask: token 0 when stable, else the best candidate (the caller's choice, as the predictor makes it).
    _, single_iou, single_low = predictor.predict(multimask_output=False, **kwargs)
    logits = masks[0, 0]
    stable = (logits > 0.05).sum() / max((logits > -0.05).sum(), 1) >= 0.98
    chosen = 0 if stable else 1 + int(np.argmax(iou[0, 1:]))
    assert np.abs(low_res[0, chosen] - single_low[0]).max() <= 1e-3
    assert abs(iou[0, chosen] - single_iou[0]) <= 1e-4

    # Mask input: the candidate fed back as the next prompt's mask.
    refined = session.run(None, feeds(predictor, image, points, labels, mask_input=low_res[0, 1:2]))
    _, expected_iou, _ = predictor.predict(mask_input=low_res[0, 1:2], multimask_output=True, **kwargs)
    assert np.abs(refined[1][0, 1:] - expected_iou).max() <= 1e-4


def test_quantized_decoder_is_small_and_agrees(tiny, exported):
    _, predictor, image = tiny
    fp32 = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(exported[1]), decoder_session_options(), providers=["CPUExecutionProvider"])
    # The SAM 1 default decoder (lowres-quantized) is 4,703,519 bytes (docs/benchmarks.md); the goal is <= 1.1x.
    assert exported[1].stat().st_size <= 1.1 * 4_703_519
    assert exported[1].stat().st_size < 0.3 * exported[0].stat().st_size
    for points, labels in PROMPTS:
        inputs = feeds(predictor, image, points, labels)
        expected, got = fp32.run(None, inputs)[2], quantized.run(None, inputs)[2]
        agreement = ((expected > 0) == (got > 0)).mean()
        assert agreement >= 0.99, f"{agreement:.4f} of low-res pixels agree"
