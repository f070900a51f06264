"""SAM 2's fast lowres ONNX decoder (model_export/sam2_lowres_model.py) in onnxruntime against backend.sam2's
SAM2ImagePredictor: IoUs, low-res logits and the masks the page draws from them, for every kind of prompt.

backend_fixtures.small_sam2: a seeded random SAM 2.1 whose single-mask token's hypernetwork is scaled so that, on these prompts, token 0's
mask is kept for some and falls back to the most stable candidate for others (both branches asserted). The
features are seeded random tensors given to the predictor with set_features (no encoder run).
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from backend_fixtures import small_sam2, vit_t_model

from backend.sam2 import SAM2ImagePredictor
from backend.services.decoders import DecoderFileError, built_in_recipe, inspect_decoder, prepare_decoders
from model_export import QUANTIZATION_RECIPES, quantize_decoder
from model_export.quantize import SAM2_INTEGER_PRODUCTS
from model_export.sam2_lowres_model import SAM2_LOWRES_OUTPUT_NAMES, export_sam2_lowres_decoder
from model_export.sam2_model import SAM2_INPUT_NAMES

IMAGE_HW = (300, 450)
# GELU is written in its tanh form in the graph: <= 3e-4 from the erf one per feature, up to ~3e-3 in these
# logits after the hypernetwork product (random features of unit scale, token 0 scaled). A wrong high-res
# add or row order moves them by ~1 (and the masks fail).
LOGIT_TOL = 5e-3
MASK_AGREEMENT = 0.995
# The SAM 1 default decoder (vit_b lowres-quantized, docs/benchmarks.md "## Decoder"); SAM 2's may be 1.1x.
SAM1_DEFAULT_DECODER_BYTES = 4_703_519

PROMPTS = [
    {"points": [[100, 80]], "labels": [1], "multimask": True},
    {"points": [[100, 80]], "labels": [1], "multimask": False},
    {"points": [[100, 80], [300, 200]], "labels": [1, 0], "multimask": False},
    {"points": [[400, 30]], "labels": [1], "multimask": False},
    {"box": [60, 40, 380, 260], "multimask": False},
    {"points": [[225, 150]], "labels": [1], "box": [120, 60, 400, 280], "multimask": True},
    {"points": [[100, 80], [20, 280]], "labels": [1, 1], "multimask": False, "mask_from": 0},
]


@pytest.fixture(scope="module")
def model():
    return small_sam2()


@pytest.fixture(scope="module")
def predictor(model):
    generator = torch.Generator().manual_seed(1)
    features = {
        "image_embed": torch.randn(1, 256, 64, 64, generator=generator),
        "high_res_feats": [
            torch.randn(1, 32, 256, 256, generator=generator),
            torch.randn(1, 64, 128, 128, generator=generator),
        ],
    }
    sam2_predictor = SAM2ImagePredictor(model)
    sam2_predictor.set_features(features, IMAGE_HW)
    return sam2_predictor


@pytest.fixture(scope="module")
def decoders(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sam2_lowres")
    fp32 = export_sam2_lowres_decoder(model, directory / "lowres.onnx")
    # The recipe the server builds SAM 2's default file with.
    served = QUANTIZATION_RECIPES[built_in_recipe("lowres-quantized", sam2=True)]
    quantized = quantize_decoder(fp32, directory / "lowres-quantized.onnx", **served)
    float_products = quantize_decoder(fp32, directory / "weight-only.onnx", **QUANTIZATION_RECIPES["weight-only"])
    return {"lowres": fp32, "lowres-quantized": quantized, "weight-only": float_products}


def predictor_answers(predictor):
    """Per prompt: the predictor's (masks, iou, low_res) and the keyword arguments it was called with."""
    answers = []
    for prompt in PROMPTS:
        kwargs = {"multimask_output": prompt["multimask"]}
        if "points" in prompt:
            kwargs["point_coords"] = np.array(prompt["points"], dtype=np.float32)
            kwargs["point_labels"] = np.array(prompt["labels"])
        if "box" in prompt:
            kwargs["box"] = np.array(prompt["box"], dtype=np.float32)
        if "mask_from" in prompt:
            _, iou, low_res = answers[prompt["mask_from"]][0]
            kwargs["mask_input"] = low_res[int(np.argmax(iou))][None]
        answers.append((predictor.predict(**kwargs), kwargs))
    return answers


def onnx_feeds(predictor, kwargs) -> dict[str, np.ndarray]:
    """The page's feeds for one prompt: x scaled by 1024 / W and y by 1024 / H, box corners labelled 2 and 3,
    a padding point, the mask input (if any) as the predictor returned it."""
    height, width = IMAGE_HW
    scale = np.array([1024 / width, 1024 / height], dtype=np.float32)
    coords, labels = [], []
    if "point_coords" in kwargs:
        coords += list(kwargs["point_coords"] * scale)
        labels += list(kwargs["point_labels"])
    if "box" in kwargs:
        coords += list(kwargs["box"].reshape(2, 2) * scale)
        labels += [2, 3]
    coords.append(np.zeros(2, np.float32))
    labels.append(-1)
    mask_input = kwargs.get("mask_input")
    features = predictor._features
    return {
        "image_embed": features["image_embed"].numpy(),
        "high_res_feats_0": features["high_res_feats"][0].numpy(),
        "high_res_feats_1": features["high_res_feats"][1].numpy(),
        "point_coords": np.array(coords, dtype=np.float32)[None],
        "point_labels": np.array(labels, dtype=np.float32)[None],
        "mask_input": (mask_input if mask_input is not None else np.zeros((1, 256, 256)))[None].astype(np.float32),
        "has_mask_input": np.array([mask_input is not None], dtype=np.float32),
    }


def decode(path, predictor, model, kwargs) -> tuple[np.ndarray, np.ndarray, bool]:
    """The graph's answer as the page picks it: IoUs [K] and low-res logits [K, 256, 256] of the candidates
    (1..3), or of the single mask after the stability fallback; and whether that fallback was taken."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    iou, low_res = session.run(None, onnx_feeds(predictor, kwargs))
    if kwargs["multimask_output"]:
        return iou[0, 1:], low_res[0, 1:], False
    single, single_iou = model.sam_mask_decoder._dynamic_multimask_via_stability(
        torch.from_numpy(low_res), torch.from_numpy(iou)
    )
    fell_back = not np.array_equal(single[0].numpy(), low_res[0, :1])
    return single_iou[0].numpy(), single[0].numpy(), fell_back


def full_size_masks(low_res: np.ndarray) -> np.ndarray:
    """What the page draws: low-res logits [K, 256, 256] stretched to the image (bilinear) and thresholded."""
    logits = F.interpolate(torch.from_numpy(low_res)[None], IMAGE_HW, mode="bilinear", align_corners=False)[0]
    return (logits > 0).numpy()


def test_inputs_are_the_public_sam2_ones_and_outputs_the_lowres_ones(decoders):
    session = ort.InferenceSession(str(decoders["lowres"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(SAM2_INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(SAM2_LOWRES_OUTPUT_NAMES)


def test_lowres_decoder_equals_the_torch_predictor(decoders, predictor, model):
    """IoUs, low-res logits and full-size masks as the predictor's, for candidates, single masks (both branches
    of the stability fallback), boxes and a fed-back mask."""
    fell_back = []
    for (masks, iou, low_res), kwargs in predictor_answers(predictor):
        onnx_iou, onnx_low_res, fallback = decode(decoders["lowres"], predictor, model, kwargs)
        np.testing.assert_allclose(onnx_iou, iou, atol=LOGIT_TOL, rtol=LOGIT_TOL)
        # The predictor returns its logits clamped; the graph's are not (the page upsamples them as they are).
        np.testing.assert_allclose(np.clip(onnx_low_res, -32, 32), low_res, atol=LOGIT_TOL, rtol=LOGIT_TOL)
        agreement = (full_size_masks(onnx_low_res) == masks.astype(bool)).mean()
        assert agreement >= MASK_AGREEMENT, (kwargs, agreement)
        if not kwargs["multimask_output"]:
            fell_back.append(fallback)
    assert any(fell_back) and not all(fell_back), fell_back


def test_quantized_lowres_decoder_is_small_and_close(decoders, predictor, model):
    """Within 1.1x the SAM 1 default decoder's bytes; its masks agree with the predictor's."""
    assert decoders["lowres-quantized"].stat().st_size <= 1.1 * SAM1_DEFAULT_DECODER_BYTES
    for (masks, _, _), kwargs in predictor_answers(predictor):
        _, onnx_low_res, _ = decode(decoders["lowres-quantized"], predictor, model, kwargs)
        agreement = (full_size_masks(onnx_low_res) == masks.astype(bool)).mean()
        assert agreement >= 0.97, (kwargs, agreement)


def test_default_decoder_multiplies_the_attention_products_in_integers(decoders, predictor, model):
    """SAM 2's default file runs its attention products in int8 (SAM2_INTEGER_PRODUCTS), and its masks are
    those of the same weights with float products, but for a few pixels on their edges."""
    import onnx

    graph = onnx.load(str(decoders["lowres-quantized"])).graph
    assert sum(node.op_type == "MatMulIntegerToFloat" for node in graph.node) == len(SAM2_INTEGER_PRODUCTS)
    assert not {node.name for node in graph.node} & set(SAM2_INTEGER_PRODUCTS)
    for _, kwargs in predictor_answers(predictor):
        _, integer, _ = decode(decoders["lowres-quantized"], predictor, model, kwargs)
        _, floats, _ = decode(decoders["weight-only"], predictor, model, kwargs)
        shown, expected = full_size_masks(integer), full_size_masks(floats)
        assert (shown & expected).sum() / max(1, (shown | expected).sum()) >= 0.99, kwargs


def test_served_decoder_files_name_their_sam2_interface(decoders, tmp_path):
    """The server lists a SAM 2 file as sam2-lowres (GET /api/model's `interface`), and refuses it as the
    custom decoder of a SAM 1 model before exporting anything."""
    assert inspect_decoder(decoders["lowres"]) == {"interface": "sam2-lowres", "quantized": False}
    assert inspect_decoder(decoders["lowres-quantized"]) == {"interface": "sam2-lowres", "quantized": True}
    with pytest.raises(DecoderFileError, match="sam2-lowres interface"):
        prepare_decoders(vit_t_model(), "vit_t-test", tmp_path, custom_decoder=decoders["lowres"])
    assert not list(tmp_path.iterdir())
