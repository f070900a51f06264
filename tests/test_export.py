"""ONNX decoder export (model_export) and the decoder files the backend serves (backend.services.decoders).

On the seeded reduced ViT: onnxruntime outputs against the project's torch predictor on a photo (everywhere),
and against the reference implementation's stored arrays (the parity tests, marked ``reference``).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from backend_fixtures import (
    SMALL_PHOTO,
    model_embedding,
    photo,
    reduced_checkpoint,
    reduced_config_file,
    reduced_sam,
    reference_case,
)

from backend.sam import SamPredictor
from backend.services.decoders import DecoderFileError, cache_key, inspect_decoder, prepare_decoders, sha256_of
from model_export import EXPORTER_VERSION, PER_IMAGE_OUTPUTS, decoder_session_options, export_decoder, per_image_inputs
from model_export.__main__ import main as export_main
from model_export.lowres_model import UPSCALE_ROW_BLOCKS
from model_export.per_image_outputs import CACHED_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference data allows 1e-3; the graphs match to ~3e-7, and a half-pixel slip in point encoding moves these
# random-weight logits by only ~8e-4, so the bound is kept tight enough to catch it.
LOGIT_TOL = 1e-4
MASK_AGREEMENT = 0.995


# One prompt of each kind, in image pixels of the 800x534 photo (mask_from: j feeds back prompt j's best low-res
# logits as the mask prompt), shaped like the reference data's prompts.
PROMPTS = [
    {"points": [[400.0, 267.0]], "labels": [1], "multimask": True},
    {"points": [[240.0, 210.0], [560.0, 320.0]], "labels": [1, 0], "multimask": False},
    {"box": [80.0, 100.0, 640.0, 480.0], "multimask": False},
    {"points": [[400.0, 267.0]], "labels": [1], "box": [160.0, 100.0, 720.0, 480.0], "multimask": False},
    {"points": [[400.0, 267.0], [160.0, 430.0]], "labels": [1, 1], "multimask": False, "mask_from": 0},
]


@pytest.fixture(scope="module")
def model():
    return reduced_sam()


@pytest.fixture(scope="module")
def own(model):
    """The seeded reduced model's embedding of an 800x534 photo (scikit-image's cat, enlarged)."""
    image = photo(*SMALL_PHOTO)
    return {"embedding": model_embedding(model, image)[None], "image_hw": list(image.shape[:2])}


@pytest.fixture(scope="module")
def predictor(model, own):
    predictor = SamPredictor(model)
    predictor.set_embedding(own["embedding"], tuple(own["image_hw"]))
    return predictor


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_case(reference_dir, "reduced_vit_seed0_dog")


@pytest.fixture(scope="module")
def decoders(model, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("decoders")
    return {d["name"]: d for d in prepare_decoders(model, "reduced-seed0", cache_dir)}


# The lowres graph's token extent for the whole 64 x 64 grid: all 256 x 256 low-res logits.
ALL_TOKENS = {"valid_tokens": np.array([64, 64], np.int64)}


class Session:
    """An onnxruntime session on 2 threads whose run() gives a lowres graph every token and no per-image inputs
    (it computes them) unless told otherwise, and returns only the outputs a decoder's user reads."""

    def __init__(self, path) -> None:
        options = decoder_session_options(2)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        self.defaults = {
            **(ALL_TOKENS if "valid_tokens" in names else {}),
            **(per_image_inputs() if CACHED_PREFIX + PER_IMAGE_OUTPUTS[0] in names else {}),
        }
        self.outputs = [o.name for o in self.session.get_outputs() if o.name not in PER_IMAGE_OUTPUTS]

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        return self.session.run(output_names or self.outputs, {**self.defaults, **feeds})

    def __getattr__(self, name):
        return getattr(self.session, name)


def session(path) -> Session:
    return Session(path)


def unpack_bits(bits: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(bits, axis=-1)[..., :width].astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def no_mask_input() -> dict:
    return {"mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}


def orig_im_size(h: int, w: int) -> dict:
    return {"orig_im_size": np.array([h, w], np.float32)}


def onnx_interface_feeds(meta, arrays, kind: str = "multi") -> dict:
    """The reference's own inputs for Meta's ONNX interface (`kind` "multi" or "single" mask)."""
    return {
        "image_embeddings": arrays["embedding"],
        "point_coords": arrays[f"onnxif_{kind}_point_coords"],
        "point_labels": arrays[f"onnxif_{kind}_point_labels"],
        **no_mask_input(),
        **orig_im_size(*meta["image_hw"]),
    }


def onnx_prompt(predictor, prompt, mask_input=None):
    """Reference prompt (image pixels) -> the ONNX inputs, as a client builds them."""
    hw = predictor.original_size
    coords, labels = [], []
    if "points" in prompt:
        coords.append(predictor.transform.apply_coords(np.array(prompt["points"], dtype=np.float64), hw))
        labels.append(np.array(prompt["labels"], dtype=np.float64))
    if "box" in prompt:
        box = predictor.transform.apply_boxes(np.array([prompt["box"]], dtype=np.float64), hw)
        coords.append(box.reshape(2, 2))
        labels.append(np.array([2, 3]))
    else:
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1]))
    feeds = {
        "point_coords": np.concatenate(coords)[None].astype(np.float32),
        "point_labels": np.concatenate(labels)[None].astype(np.float32),
        **no_mask_input(),
    }
    if mask_input is not None:
        feeds["mask_input"] = mask_input.reshape(1, 1, 256, 256).astype(np.float32)
        feeds["has_mask_input"] = np.ones(1, np.float32)
    return feeds


def reference_cases(reference):
    """(index, prompt, feeds-builder args) for the reference prompts: points, box, box + points, mask input."""
    meta, arrays = reference
    for i, prompt in enumerate(meta["prompts"]):
        mask_input = None
        if "mask_from" in prompt:
            j = prompt["mask_from"]
            mask_input = arrays[f"p{j}_low_res"][np.argmax(arrays[f"p{j}_iou"])]
        yield i, prompt, mask_input


def torch_predict(predictor, prompt, mask_input=None):
    """The project's torch predictor on a prompt in image pixels: (masks, scores, low-res logits)."""
    return predictor.predict(
        point_coords=np.array(prompt["points"]) if "points" in prompt else None,
        point_labels=np.array(prompt["labels"]) if "points" in prompt else None,
        box=np.array(prompt["box"]) if "box" in prompt else None,
        mask_input=None if mask_input is None else mask_input[None],
        multimask_output=prompt["multimask"],
    )


def own_cases(predictor):
    """(index, prompt, mask input) for PROMPTS, mask inputs taken from the torch predictor's earlier answers."""
    for i, prompt in enumerate(PROMPTS):
        mask_input = None
        if "mask_from" in prompt:
            _, scores, low_res = torch_predict(predictor, PROMPTS[prompt["mask_from"]])
            mask_input = low_res[np.argmax(scores)]
        yield i, prompt, mask_input


def official_feeds(own, predictor, prompt=PROMPTS[0]) -> dict:
    """Inputs for Meta's ONNX interface (the official graphs) for one prompt on the photo."""
    return {"image_embeddings": own["embedding"], **onnx_prompt(predictor, prompt), **orig_im_size(*own["image_hw"])}


def candidates(prompt) -> slice:
    """The 4-mask graphs' outputs matching the reference's: 1..3 for multimask, 0 (single-mask token) else."""
    return slice(1, 4) if prompt["multimask"] else slice(0, 1)


@pytest.mark.parametrize("name", ["lowres", "lowres-quantized"])
def test_lowres_image_side_runs_plain_norms_and_fast_gelus(decoders, name, tmp_path):
    """onnxruntime-web's LayerNormalization and (erf) Gelu kernels are ~2x slower than plain ops on image-sized
    tensors, and its FastGelu (the tanh form) about twice as fast (docs/benchmarks.md "Decoder"): after
    onnxruntime's own graph optimizations, as the browser runs them, only the prompt tokens' 7 layer norms are
    left fused, and the upscaling's GELUs are FastGelu kernels, not plain ops or another GELU kernel."""
    options = decoder_session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{name}-optimized.onnx")
    ort.InferenceSession(str(decoders[name]["path"]), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    # The first block's token side runs in either branch of the per-image If (per_image_outputs.py).
    per_image = next(node for node in graph.node if node.name == "per_image/If")
    branches = {a.name: [node.op_type for node in a.g.node] for a in per_image.attribute}
    ops = [node.op_type for node in graph.node] + branches["then_branch"]
    assert ops.count("LayerNormalization") == 7, ops.count("LayerNormalization")
    assert branches["else_branch"].count("LayerNormalization") == branches["then_branch"].count("LayerNormalization")
    assert not {"Erf", "Tanh", "Gelu", "BiasGelu", "QuickGelu"} & set(ops)
    # The upscaling's two GELUs once per block of token rows.
    assert ops.count("FastGelu") == 2 * UPSCALE_ROW_BLOCKS


def client_upsample(low_res: np.ndarray, input_size, original_size) -> np.ndarray:
    """What the web client does with lowres logits: bilinear (half-pixel) to 1024, crop, resize to the image."""
    x = torch.from_numpy(low_res)
    x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False).numpy()


# ---------------------------------------------------------------- graph interface


@pytest.mark.parametrize("name", ["official", "lowres", "official-quantized", "lowres-quantized"])
def test_graph_interface_and_only_prompt_axes_dynamic(decoders, name):
    graph = onnx.load(str(decoders[name]["path"])).graph
    interface = decoders[name]["interface"]
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    if interface == "official":
        expected = {
            "image_embeddings": [1, 256, 64, 64],
            "point_coords": [1, "num_points", 2],
            "point_labels": [1, "num_points"],
            "mask_input": [1, 1, 256, 256],
            "has_mask_input": [1],
            "orig_im_size": [2],
        }
    else:
        # Any number of prompts in one run; mask inputs for none of them (1) or each (num_masks == num_prompts).
        expected = {
            "image_embeddings": [1, 256, 64, 64],
            "point_coords": ["num_prompts", "num_points", 2],
            "point_labels": ["num_prompts", "num_points"],
            "mask_input": ["num_masks", 1, 256, 256],
            "has_mask_input": ["num_masks"],
            "valid_tokens": [2],
            # A previous run's per-image outputs on this image, or empty ones (see per_image_outputs.py).
            **{CACHED_PREFIX + name: [] for name in PER_IMAGE_OUTPUTS},
        }
    shapes = {
        name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for name, value in inputs.items()
    }
    assert shapes == expected
    outputs = [o.name for o in graph.output]
    assert outputs == (
        ["masks", "iou_predictions", "low_res_masks"]
        if interface == "official"
        else ["iou_predictions", "low_res_masks", *PER_IMAGE_OUTPUTS]
    )
    assert opset_of(onnx.load(str(decoders[name]["path"]), load_external_data=False)) == 17


def opset_of(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("num_points", [1, 2, 6, 12])
def test_any_number_of_points_runs(decoders, own, num_points):
    rng = np.random.default_rng(num_points)
    feeds = {
        "image_embeddings": own["embedding"],
        "point_coords": rng.uniform(0, 1024, (1, num_points, 2)).astype(np.float32),
        "point_labels": rng.integers(-1, 4, (1, num_points)).astype(np.float32),
        **no_mask_input(),
    }
    official = session(decoders["official"]["path"]).run(None, {**feeds, **orig_im_size(300, 500)})
    lowres = session(decoders["lowres"]["path"]).run(None, feeds)
    assert official[0].shape == (1, 4, 300, 500)
    assert official[1].shape == (1, 4) and lowres[0].shape == (1, 4)
    np.testing.assert_allclose(lowres[1], official[2], atol=LOGIT_TOL)
    np.testing.assert_allclose(lowres[0], official[1], atol=LOGIT_TOL)


# With mask prompts in the run, each prompt's image rows are its own from the first block on, and a run of six
# sums them in another order than a run of one: float32 rounding, 1e-7 apart. The quantized file's attention
# products quantize each prompt's operands with its own scale (model_export/quantize.py), so nothing of one prompt
# reaches another; but a value that sits on a rounding boundary may land one level apart: up to 2e-4 in the
# logits, which flipped 13 of the 262,144 low-res logits of the random weights (they have many near 0).
MASK_BATCH_TOL = {"lowres": 1e-4, "lowres-quantized": 1e-3}
MASK_BATCH_FLIPS = {"lowres": 0.0, "lowres-quantized": 1e-4}


@pytest.mark.parametrize("name", ["lowres", "lowres-quantized"])
def test_many_prompts_in_one_run_equal_their_own_runs(decoders, predictor, own, name):
    """Boxes, clicks and box + click prompts (3 tokens each), some with a mask prompt, in one lowres run: each
    prompt's candidates and scores are those of its own run (the image side before the first image-to-token
    attention is shared; nothing of one prompt reaches another)."""
    h, w = own["image_hw"]
    rng = np.random.default_rng(3)
    prompts = []
    for i in range(6):
        x, y = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        if i % 3 == 0:
            prompt = {"points": [[x, y], [x + 40, y + 30]], "labels": [1, 0]}
        elif i % 3 == 1:
            prompt = {"points": [[x, y]], "labels": [1], "box": [x - 120, y - 90, x + 100, y + 80]}
        else:
            prompt = {"points": [[x, y], [x - 50, y + 10]], "labels": [1, 1]}
        prompts.append(onnx_prompt(predictor, prompt))
    graph = session(decoders[name]["path"])
    image = {"image_embeddings": own["embedding"]}
    one_by_one = [graph.run(None, {**image, **feeds}) for feeds in prompts]
    assert len({f["point_coords"].shape for f in prompts}) == 1  # same token count: one batch
    batch = {
        "point_coords": np.concatenate([f["point_coords"] for f in prompts]),
        "point_labels": np.concatenate([f["point_labels"] for f in prompts]),
        **no_mask_input(),
    }
    scores, low_res = graph.run(None, {**image, **batch})
    assert scores.shape == (6, 4) and low_res.shape == (6, 4, 256, 256)
    for b, (single_scores, single_low_res) in enumerate(one_by_one):
        np.testing.assert_allclose(scores[b], single_scores[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(low_res[b], single_low_res[0], atol=1e-4, rtol=0)
        assert ((low_res[b] > 0) == (single_low_res[0] > 0)).all()
    assert not np.allclose(low_res[0], low_res[1])  # the prompts differ, so the check is not vacuous

    # Mask prompts for some: mask_input and has_mask_input then have one entry per prompt.
    masks = np.stack([one_by_one[(b + 1) % 6][1][0, 0:1] for b in range(6)]).astype(np.float32)
    flags = np.array([1, 0, 1, 1, 0, 0], np.float32)
    scores, low_res = graph.run(None, {**image, **batch, "mask_input": masks, "has_mask_input": flags})
    for b in range(6):
        feeds = {**prompts[b]}
        if flags[b]:
            feeds.update(mask_input=masks[b : b + 1], has_mask_input=np.ones(1, np.float32))
        single_scores, single_low_res = graph.run(None, {**image, **feeds})
        np.testing.assert_allclose(scores[b], single_scores[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(low_res[b], single_low_res[0], atol=MASK_BATCH_TOL[name], rtol=0)
        assert ((low_res[b] > 0) != (single_low_res[0] > 0)).mean() <= MASK_BATCH_FLIPS[name]
        if not flags[b]:
            np.testing.assert_array_equal(low_res[b], one_by_one[b][1][0])
    assert not np.allclose(low_res[0], one_by_one[0][1][0])  # the mask prompt did change prompt 0's masks


@pytest.mark.parametrize("name", ["lowres", "lowres-quantized"])
def test_lowres_upscales_only_the_tokens_asked_for(decoders, predictor, own, name):
    """valid_tokens (r, c): low_res_masks [B, 4, 4r, 4c] equal to that corner of a run with every token, for
    clicks and boxes in one run; the IoU predictions do not change."""
    h, w = own["image_hw"]
    prompts = [
        onnx_prompt(predictor, {"points": [[0.3 * w, 0.4 * h]], "labels": [1], "box": [0.1 * w, 0.1 * h, w, h]}),
        onnx_prompt(predictor, {"points": [[0.8 * w, 0.7 * h]], "labels": [1], "box": [0, 0, 0.5 * w, 0.9 * h]}),
    ]
    feeds = {
        "image_embeddings": own["embedding"],
        "point_coords": np.concatenate([f["point_coords"] for f in prompts]),
        "point_labels": np.concatenate([f["point_labels"] for f in prompts]),
        **no_mask_input(),
    }
    graph = session(decoders[name]["path"])
    scores, low_res = graph.run(None, {**feeds, **ALL_TOKENS})
    assert low_res.shape == (2, 4, 256, 256)
    # (1, 1), (3, 5), (6, 64): fewer token rows than the upscaling's blocks (UPSCALE_ROW_BLOCKS), or not a multiple.
    for rows, cols in [(43, 64), (64, 37), (1, 1), (3, 5), (6, 64)]:
        corner_scores, corner = graph.run(None, {**feeds, "valid_tokens": np.array([rows, cols], np.int64)})
        assert corner.shape == (2, 4, 4 * rows, 4 * cols)
        np.testing.assert_array_equal(corner, low_res[..., : 4 * rows, : 4 * cols])
        np.testing.assert_array_equal(corner_scores, scores)


def test_folded_batch_methods_equal_metas_mask_decoder_in_torch(model, own):
    """FoldedMaskDecoder.forward_batch + upscale_batch (what the lowres graph traces) in torch: B prompts, shared
    image rows or one per prompt, against MaskDecoder.predict_masks prompt by prompt."""
    from backend.sam.folded_decoder import ALL_MASKS, FoldedMaskDecoder, pixel_rows

    decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
    folded = FoldedMaskDecoder(decoder)
    embedding = torch.as_tensor(own["embedding"])
    rng = np.random.default_rng(5)
    coords = torch.as_tensor(rng.uniform(0, 1024, (3, 2, 2)), dtype=torch.float32)
    labels = torch.tensor([[1, -1], [2, 3], [1, 0]])
    masks = torch.as_tensor(rng.standard_normal((3, 1, 256, 256)), dtype=torch.float32)
    with torch.no_grad():
        sparse, no_mask = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        _, with_mask = prompt_encoder(points=None, boxes=None, masks=masks)
        image_pe = prompt_encoder.get_dense_pe()
        for dense in (no_mask[:1], with_mask):
            image = (embedding + dense).flatten(2).transpose(1, 2)
            tokens, image_tokens = folded.forward_batch(image, pixel_rows(image_pe), sparse)
            low_res = folded.upscale_batch(image_tokens, folded.hypernetworks(tokens, ALL_MASKS), 64, 64)
            scores = folded.predict_iou(tokens, ALL_MASKS)
            for b in range(3):
                expected, expected_scores = decoder.predict_masks(
                    embedding, image_pe, sparse[b : b + 1], dense[min(b, len(dense) - 1)][None]
                )
                torch.testing.assert_close(low_res[b], expected[0], atol=1e-4, rtol=0)
                torch.testing.assert_close(scores[b], expected_scores[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- parity: reference arrays


@pytest.fixture(scope="module")
def single_mask_decoder(tmp_path_factory):
    """Made through the CLI, with Meta's flag and a JSON config (the reduced model and its checkpoint)."""
    out = tmp_path_factory.mktemp("cli") / "single.onnx"
    quantized = out.with_name("single-quantized.onnx")
    code = export_main(
        [
            "--config-json",
            str(reduced_config_file()),
            "--output",
            str(out),
            "--return-single-mask",
            "--quantize-out",
            str(quantized),
        ]
    )
    assert code == 0
    return out, quantized


@pytest.mark.parametrize("kind", ["multi", "single"])
def test_official_graph_matches_reference_onnx_interface(decoders, single_mask_decoder, reference, kind):
    """The reduced model of the reference data is our seeded reduced model (test_automatic checks the weights)."""
    meta, arrays = reference
    _, w = meta["image_hw"]
    path = decoders["official"]["path"] if kind == "multi" else single_mask_decoder[0]
    masks, scores, low_res = session(path).run(None, onnx_interface_feeds(meta, arrays, kind))
    np.testing.assert_allclose(low_res, arrays[f"onnxif_{kind}_low_res"], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(scores, arrays[f"onnxif_{kind}_scores"], atol=LOGIT_TOL, rtol=0)
    expected = unpack_bits(arrays[f"onnxif_{kind}_mask_bits"], w)
    assert masks.shape == expected.shape
    assert ((masks > 0) == expected).mean() >= MASK_AGREEMENT


def test_cli_registry_model_type_matches_reference_mobile_sam(reference_dir, tmp_path):
    """--checkpoint + --model-type (Meta's flags) on the MobileSAM reference: the official 4-mask graph."""
    meta, arrays = reference_case(reference_dir, "vit_t_seed0_truck")
    _, w = meta["image_hw"]
    out = tmp_path / "vit_t.onnx"
    assert (
        export_main(
            ["--checkpoint", str(reference_dir / meta["checkpoint"]), "--model-type", "vit_t", "--output", str(out)]
        )
        == 0
    )
    masks, scores, low_res = session(out).run(None, onnx_interface_feeds(meta, arrays))
    np.testing.assert_allclose(low_res, arrays["onnxif_multi_low_res"], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(scores, arrays["onnxif_multi_scores"], atol=LOGIT_TOL, rtol=0)
    assert ((masks > 0) == unpack_bits(arrays["onnxif_multi_mask_bits"], w)).mean() >= MASK_AGREEMENT


PROMPT_IDS = ["point", "points", "box", "box+point", "mask-input"]


@pytest.mark.parametrize("index", range(5), ids=PROMPT_IDS)
def test_official_decoder_matches_reference(decoders, reference, index):
    meta, arrays = reference
    i, prompt, mask_input = list(reference_cases(reference))[index]
    h, w = meta["image_hw"]
    reference_predictor = SamPredictor(reduced_sam())
    reference_predictor.set_embedding(arrays["embedding"], (h, w))
    feeds = {"image_embeddings": arrays["embedding"], **onnx_prompt(reference_predictor, prompt, mask_input)}
    pick = candidates(prompt)
    masks, scores, low_res = session(decoders["official"]["path"]).run(None, {**feeds, **orig_im_size(h, w)})
    # Against Meta's reference predictor outputs.
    np.testing.assert_allclose(low_res[0, pick], arrays[f"p{i}_low_res"], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(scores[0, pick], arrays[f"p{i}_iou"], atol=LOGIT_TOL, rtol=0)
    assert ((masks[0, pick] > 0) == unpack_bits(arrays[f"p{i}_mask_bits"], w)).mean() >= MASK_AGREEMENT


@pytest.mark.parametrize("index", range(5), ids=PROMPT_IDS)
def test_onnx_decoders_match_the_torch_predictor(decoders, predictor, own, index):
    i, prompt, mask_input = list(own_cases(predictor))[index]
    h, w = own["image_hw"]
    feeds = {"image_embeddings": own["embedding"], **onnx_prompt(predictor, prompt, mask_input)}
    pick = candidates(prompt)
    masks, scores, low_res = session(decoders["official"]["path"]).run(None, {**feeds, **orig_im_size(h, w)})
    lowres_scores, lowres_low_res = session(decoders["lowres"]["path"]).run(None, feeds)

    torch_masks, torch_scores, torch_low_res = torch_predict(predictor, prompt, mask_input)
    assert 0.0 < torch_masks.mean() < 1.0, i  # neither empty nor full: the comparison is not vacuous
    np.testing.assert_allclose(low_res[0, pick], torch_low_res, atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(scores[0, pick], torch_scores, atol=LOGIT_TOL, rtol=0)
    assert ((masks[0, pick] > 0) == torch_masks).mean() >= MASK_AGREEMENT

    # The fast variant, upsampled as the client does, gives the same masks.
    np.testing.assert_allclose(lowres_low_res[0, pick], torch_low_res, atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(lowres_scores[0, pick], torch_scores, atol=LOGIT_TOL, rtol=0)
    client_masks = client_upsample(lowres_low_res, predictor.input_size, (h, w))[0, pick] > 0
    for k in range(client_masks.shape[0]):
        assert mask_iou(client_masks[k], torch_masks[k]) >= 0.99


# ---------------------------------------------------------------- quantization


def test_quantized_decoders_are_smaller_and_keep_masks(decoders, predictor, own, capsys):
    """
    Per-candidate mask IoU of the uint8-weight decoders against fp32, over 16 random prompts of 1-3 clicks.
    The fp32 reference is the fp32 official graph, which the tests above hold equal to the torch predictor
    (and is ten times faster to run here).
    """
    h, w = own["image_hw"]
    for name in ("official", "lowres"):
        assert decoders[f"{name}-quantized"]["bytes"] < 0.6 * decoders[name]["bytes"]
    fp32 = session(decoders["official"]["path"])
    official_q = session(decoders["official-quantized"]["path"])
    lowres_q = session(decoders["lowres-quantized"]["path"])
    rng = np.random.default_rng(0)
    ious = {"official-quantized": [], "lowres-quantized": []}
    for _ in range(16):
        n = int(rng.integers(1, 4))
        points = rng.uniform([0, 0], [w, h], (n, 2))
        labels = np.concatenate([[1], rng.integers(0, 2, n - 1)])
        feeds = {
            "image_embeddings": own["embedding"],
            **onnx_prompt(predictor, {"points": points.tolist(), "labels": labels.tolist()}),
        }
        expected = fp32.run(None, {**feeds, **orig_im_size(h, w)})[0][0] > 0
        masks = official_q.run(None, {**feeds, **orig_im_size(h, w)})[0][0] > 0
        ious["official-quantized"].append([mask_iou(masks[k], expected[k]) for k in range(4)])
        low_res = lowres_q.run(None, feeds)[1]
        masks = client_upsample(low_res, predictor.input_size, (h, w))[0] > 0
        ious["lowres-quantized"].append([mask_iou(masks[k], expected[k]) for k in range(4)])
    with capsys.disabled():
        for name, values in ious.items():
            values = np.array(values)
            print(
                f"\n{name}: mask IoU vs fp32 per candidate (0 = single-mask token, 1-3 multimask): "
                f"mean {np.round(values.mean(0), 4).tolist()}, min {np.round(values.min(0), 4).tolist()}"
            )
    for name, values in ious.items():
        values = np.array(values)
        assert values.mean(0).min() >= 0.97, name
        assert values.min() >= 0.9, name


def test_quantized_single_mask_graph_matches_a_multimask_candidate(decoders, single_mask_decoder, predictor, own):
    """After quantization a single-mask graph may pick another near-tied candidate; its mask must match it."""
    h, w = own["image_hw"]
    feeds = official_feeds(own, predictor)
    masks, scores, _ = session(single_mask_decoder[1]).run(None, feeds)
    assert masks.shape == (1, 1, h, w)
    all_masks = session(decoders["official"]["path"]).run(None, feeds)[0][0, 1:] > 0
    best = max(mask_iou(masks[0, 0] > 0, candidate) for candidate in all_masks)
    assert best >= 0.95


# ---------------------------------------------------------------- CLI options


def test_extra_metrics_and_stability_score_outputs(tmp_path, decoders, predictor, own):
    out = tmp_path / "extra.onnx"
    assert (
        export_main(
            [
                "--config-json",
                str(reduced_config_file()),
                "--output",
                str(out),
                "--return-extra-metrics",
                "--use-stability-score",
                "--gelu-approximate",
            ]
        )
        == 0
    )
    s = session(out)
    assert [o.name for o in s.get_outputs()] == [
        "masks",
        "iou_predictions",
        "stability_scores",
        "areas",
        "low_res_masks",
    ]
    feeds = official_feeds(own, predictor)
    masks, scores, stability, areas, low_res = s.run(None, feeds)
    np.testing.assert_array_equal(areas, (masks > 0).sum((-1, -2)))
    np.testing.assert_allclose(stability, (masks > 1).sum((-1, -2)) / (masks > -1).sum((-1, -2)), rtol=1e-6)
    np.testing.assert_allclose(scores, (low_res > 1).sum((-1, -2)) / (low_res > -1).sum((-1, -2)), rtol=1e-6)
    # tanh GELU moves the logits slightly, not the masks (against the exact-GELU official graph).
    exact_masks, _, exact_low_res = session(decoders["official"]["path"]).run(None, feeds)
    assert np.abs(low_res - exact_low_res).max() < 0.05
    assert ((masks > 0) == (exact_masks > 0)).mean() >= 0.99


def test_cli_rejects_bad_arguments_with_plain_messages(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        export_main(
            [
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--model-type",
                "vit_b",
                "--output",
                str(tmp_path / "x.onnx"),
            ]
        )
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(
            [
                "--config-json",
                str(reduced_config_file()),
                "--output",
                str(tmp_path / "x.onnx"),
                "--variant",
                "lowres",
                "--return-single-mask",
            ]
        )
    assert "--variant official" in capsys.readouterr().err
    # A checkpoint of another architecture: a plain error, exit code 2, no file.
    code = export_main(
        [
            "--checkpoint",
            str(reduced_checkpoint()),
            "--model-type",
            "vit_b",
            "--output",
            str(tmp_path / "x.onnx"),
        ]
    )
    assert code == 2 and "vit_b" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_help_documents_meta_flags():
    out = subprocess.run(
        [sys.executable, "-m", "model_export", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for flag in [
        "--checkpoint",
        "--model-type",
        "--output",
        "--return-single-mask",
        "--opset",
        "--quantize-out",
        "--gelu-approximate",
        "--use-stability-score",
        "--return-extra-metrics",
        "--config-json",
    ]:
        assert flag in out.stdout


# ---------------------------------------------------------------- backend.services.decoders


def test_prepare_decoders_lists_hashes_and_reuses_cache(decoders, model, tmp_path):
    assert list(decoders) == ["lowres", "lowres-quantized", "official", "official-quantized"]
    for d in decoders.values():
        assert d["bytes"] == d["path"].stat().st_size
        assert d["sha256"] == sha256_of(d["path"])
        assert d["interface"] == inspect_decoder(d["path"])["interface"]
        assert d["quantized"] == d["name"].endswith("-quantized") == inspect_decoder(d["path"])["quantized"]
        assert d["path"].stat().st_mode & 0o044 == 0o044  # readable by the server process and others
    cache_dir = decoders["official"]["path"].parent.parent
    mtimes = {n: d["path"].stat().st_mtime_ns for n, d in decoders.items()}
    again = {d["name"]: d for d in prepare_decoders(model, "reduced-seed0", cache_dir)}
    assert {n: d["path"].stat().st_mtime_ns for n, d in again.items()} == mtimes
    assert {n: d["sha256"] for n, d in again.items()} == {n: d["sha256"] for n, d in decoders.items()}
    assert not list(cache_dir.rglob("*.tmp"))
    # Each weights id (a checkpoint hash, or a description of random weights) and exporter version has its own
    # directory; ids that are not plain file names are made safe without two of them colliding.
    keys = {
        cache_key(i) for i in ["reduced-seed0", "reduced-seed1", "random/seed 0", "random_seed_0", "../x", "x" * 300]
    }
    assert len(keys) == 6
    assert all(
        "/" not in k and not k.startswith(".") and len(k) < 100 and k.endswith(f"-export{EXPORTER_VERSION}")
        for k in keys
    )


def test_custom_decoder_interface_is_detected(decoders, model, single_mask_decoder, tmp_path):
    cache_dir = decoders["official"]["path"].parent.parent
    listed = prepare_decoders(model, "reduced-seed0", cache_dir, custom_decoder=single_mask_decoder[0])
    custom = listed[-1]
    assert custom["name"] == "custom" and custom["interface"] == "official" and custom["quantized"] is False
    assert custom["sha256"] == sha256_of(single_mask_decoder[0])
    assert inspect_decoder(decoders["lowres-quantized"]["path"]) == {"interface": "lowres", "quantized": True}
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(DecoderFileError, match="not a readable ONNX model"):
        prepare_decoders(model, "reduced-seed0", cache_dir, custom_decoder=garbage)
    with pytest.raises(DecoderFileError, match="does not exist"):
        prepare_decoders(model, "reduced-seed0", cache_dir, custom_decoder=tmp_path / "missing.onnx")


CONCURRENT_EXPORT = """
import json, sys
from pathlib import Path
from backend.services.decoders import prepare_decoders
from backend.sam import build_sam
config_file = Path(sys.argv[1])
spec = json.loads(config_file.read_text())
model = build_sam(checkpoint=config_file.parent / spec["checkpoint"], **spec["config"])
decoders = prepare_decoders(model, "concurrent", Path(sys.argv[2]))
print(json.dumps({d["name"]: d["sha256"] for d in decoders}))
"""


def test_two_processes_exporting_at_once_agree(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_EXPORT, str(reduced_config_file()), str(tmp_path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    assert first == second and len(first) == 4
    for path in tmp_path.rglob("*.onnx"):
        assert sha256_of(path) == first[path.stem]
        session(path)  # whole, loadable files
    assert not list(tmp_path.rglob("*.tmp"))


def test_export_leaves_the_served_model_untouched(model, tmp_path):
    """The backend exports from the model it also predicts with: export options must not leak into it."""
    before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    export_decoder(model, tmp_path / "approx.onnx", variant="lowres", gelu_approximate=True)
    assert all(m.approximate == "none" for m in model.modules() if isinstance(m, torch.nn.GELU))
    after = model.mask_decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["approx.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("name", ["lowres", "lowres-quantized"])
def test_lowres_runs_the_mask_branch_only_for_a_mask_input(decoders, name, own, tmp_path):
    """Without a mask prompt (every hover and click) the mask downscaling's convolutions do not run."""
    options = decoder_session_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / name)
    graph = ort.InferenceSession(str(decoders[name]["path"]), options, providers=["CPUExecutionProvider"])
    feeds = {
        "image_embeddings": np.asarray(own["embedding"], np.float32),
        "point_coords": np.array([[[300.0, 200.0], [0.0, 0.0]]], np.float32),
        "point_labels": np.array([[1.0, -1.0]], np.float32),
        **no_mask_input(),
        **ALL_TOKENS,
        **per_image_inputs(),
    }
    without = graph.run(None, feeds)
    with_mask = graph.run(None, {**feeds, "mask_input": without[1][:, :1], "has_mask_input": np.ones(1, np.float32)})
    events = json.loads(Path(graph.end_profiling()).read_text())
    convolutions = [e for e in events if e.get("cat") == "Node" and e["args"].get("op_name") == "Conv"]
    runs = [e for e in events if e.get("name") == "model_run"]
    assert len(runs) == 2
    # Every Conv of the graph is in the mask branch, and all of them ran during the second run only.
    assert convolutions and all(e["ts"] > runs[0]["ts"] + runs[0]["dur"] for e in convolutions)
    assert not np.allclose(without[1], with_mask[1])  # the mask prompt did change the masks


@pytest.mark.parametrize("name", ["lowres", "lowres-quantized"])
def test_lowres_projects_the_image_once_and_takes_it_back(decoders, name, own, tmp_path):
    """The first block's image projections are outputs of the first run on an image; fed back, the next runs skip
    them (onnxruntime's profiler: none of their nodes runs), return them empty and give the same outputs bitwise. A mask prompt
    changes the image rows, so with one the graph projects its own rows whatever it is given."""
    options = decoder_session_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / name)
    path = decoders[name]["path"]
    graph = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {
        "image_embeddings": np.asarray(own["embedding"], np.float32),
        "point_coords": np.array([[[300.0, 200.0], [0.0, 0.0]], [[500.0, 100.0], [0.0, 0.0]]], np.float32),
        "point_labels": np.array([[1.0, -1.0], [1.0, -1.0]], np.float32),
        **no_mask_input(),
        **ALL_TOKENS,
    }
    first = dict(
        zip([o.name for o in graph.get_outputs()], graph.run(None, {**feeds, **per_image_inputs()}), strict=True)
    )
    assert [first[name].shape for name in PER_IMAGE_OUTPUTS] == [(1, 8, 16, 4096), (1, 8, 4096, 16), (1, 8, 16, 4096)]
    again = dict(
        zip([o.name for o in graph.get_outputs()], graph.run(None, {**feeds, **per_image_inputs(first)}), strict=True)
    )
    events = json.loads(Path(graph.end_profiling()).read_text())
    for expected in ("iou_predictions", "low_res_masks"):
        assert np.array_equal(again[expected], first[expected])
    # Given, they are not handed on (no copy of them is held): the client keeps the first run's.
    assert [again[name].size for name in PER_IMAGE_OUTPUTS] == [0, 0, 0]
    per_image = next(n for n in onnx.load(str(path)).graph.node if n.name == "per_image/If")
    projections = {n.name for a in per_image.attribute if a.name == "then_branch" for n in a.g.node}
    assert any("MatMul" in n for n in projections)
    runs = [e for e in events if e.get("name") == "model_run"]
    ran = [e for e in events if e.get("cat") == "Node" and e["name"].rsplit("_kernel_time", 1)[0] in projections]
    assert len(runs) == 2 and ran
    assert all(e["ts"] < runs[0]["ts"] + runs[0]["dur"] for e in ran)  # the second run projected nothing

    # Mask prompts: given this image's projections or none, the same outputs (each prompt's own rows).
    masks = {"mask_input": first["low_res_masks"][:, :1], "has_mask_input": np.ones(2, np.float32)}
    given = graph.run(["low_res_masks"], {**feeds, **masks, **per_image_inputs(first)})[0]
    computed = graph.run(["low_res_masks"], {**feeds, **masks, **per_image_inputs()})[0]
    assert np.array_equal(given, computed) and not np.allclose(given, first["low_res_masks"])
