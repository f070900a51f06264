"""Parity of backend.sam with Meta's reference implementation on seeded random weights (marked ``reference``;
arrays and tolerances: the reference data's README.md), and the predictor's own invariants on the same seeded
models with scikit-image photos (everywhere).
"""

import numpy as np
import pytest
import torch
from backend_fixtures import REDUCED_VIT_CONFIG, SMALL_PHOTO, WIDE_PHOTO, photo, reference_case
from PIL import Image

from backend.sam import SamPredictor, build_sam, sam_model_registry
from backend.sam.transforms import ResizeLongestSide
from backend.services.weights import random_model

EMBEDDING_ATOL = 1e-3
LOGITS_ATOL = 1e-3
MASK_AGREEMENT = 0.995

CASES = {
    "reduced_vit_seed0_dog": lambda meta, path: build_sam(path, **meta["config"]),
    "vit_t_seed0_truck": lambda meta, path: sam_model_registry[meta["model_type"]](checkpoint=path),
}


def prompts_for(height: int, width: int) -> list[dict]:
    """One prompt of each kind in image pixels, like the reference data's: a point (multi-mask), a positive and a
    negative point, a box, a point in a box, two points with prompt 0's best low-res mask fed back."""
    return [
        {"points": [[width * 0.5, height * 0.5]], "labels": [1], "multimask": True},
        {"points": [[width * 0.3, height * 0.4], [width * 0.7, height * 0.6]], "labels": [1, 0], "multimask": False},
        {"box": [width * 0.1, height * 0.2, width * 0.8, height * 0.9], "multimask": False},
        {
            "points": [[width * 0.5, height * 0.5]],
            "labels": [1],
            "box": [width * 0.2, height * 0.2, width * 0.9, height * 0.9],
            "multimask": False,
        },
        {
            "points": [[width * 0.5, height * 0.5], [width * 0.2, height * 0.8]],
            "labels": [1, 1],
            "multimask": False,
            "mask_from": 0,
        },
    ]


class Case:
    """A model in fp32, its predictor with the image set, and the prompts (``meta``: ``image_hw``, ``prompts``)."""

    def __init__(self, model, image, meta, arrays=None):
        self.meta, self.arrays = meta, arrays
        self.model = model
        self.model.set_precision("fp32")
        self.image = image
        self.predictor = SamPredictor(self.model)
        self.predictor.set_image(self.image)
        self.outputs = {}

    def prompt_args(self, index):
        prompt = self.meta["prompts"][index]
        mask_input = None
        if "mask_from" in prompt:
            source = prompt["mask_from"]
            _, scores, low_res = self.predict(source)
            mask_input = low_res[np.argmax(scores)][None]
        return dict(
            point_coords=np.array(prompt["points"]) if "points" in prompt else None,
            point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
            box=np.array(prompt["box"]) if "box" in prompt else None,
            mask_input=mask_input,
            multimask_output=prompt["multimask"],
        )

    def predict(self, index):
        if index not in self.outputs:
            self.outputs[index] = self.predictor.predict(**self.prompt_args(index))
        return self.outputs[index]

    def reference_masks(self, index):
        shape = self.meta["prompts"][index]["mask_shape"]
        bits = np.unpackbits(self.arrays[f"p{index}_mask_bits"], axis=-1)
        return bits[..., : shape[-1]].astype(bool)


class ReferenceCase(Case):
    """A model with the reference checkpoint on the reference image, and the reference arrays."""

    def __init__(self, reference_dir, name):
        meta, arrays = reference_case(reference_dir, name)
        model = CASES[name](meta, reference_dir / meta["checkpoint"])
        image = np.array(Image.open(reference_dir / meta["image"]).convert("RGB"))
        super().__init__(model, image, meta, arrays)


def _seeded_reduced_vit():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_sam(**REDUCED_VIT_CONFIG)


# The same seeded models as the reference cases (built by our registry, no checkpoint file), on photos.
OWN_CASES = {
    "reduced_vit_photo": (_seeded_reduced_vit, SMALL_PHOTO),
    "vit_t_photo": (random_model, WIDE_PHOTO),
}


_LOADED = {}


def load_case(reference_dir, name):
    """Each case is built and encoded once per session (the encoder dominates the cost)."""
    if name not in _LOADED:
        _LOADED[name] = ReferenceCase(reference_dir, name)
    return _LOADED[name]


def load_own_case(name):
    if name not in _LOADED:
        build, photo_spec = OWN_CASES[name]
        image = photo(*photo_spec)
        meta = {"image_hw": list(image.shape[:2]), "prompts": prompts_for(*image.shape[:2])}
        _LOADED[name] = Case(build(), image, meta)
    return _LOADED[name]


@pytest.fixture(params=list(CASES))
def case(request, reference_dir):
    return load_case(reference_dir, request.param)


@pytest.fixture
def dog(reference_dir):
    return load_case(reference_dir, "reduced_vit_seed0_dog")


@pytest.fixture(params=list(OWN_CASES))
def own_case(request):
    return load_own_case(request.param)


@pytest.fixture
def photo_case():
    """The seeded reduced ViT on an 800x534 photo."""
    return load_own_case("reduced_vit_photo")


def test_embedding_matches_reference(case):
    embedding = case.predictor.get_image_embedding().cpu().numpy()
    assert embedding.shape == (1, 256, 64, 64)
    assert np.abs(embedding - case.arrays["embedding"]).max() <= EMBEDDING_ATOL


def test_every_prompt_matches_reference(case):
    """Points, box, points + box, mask input; single and multi-mask: IoU, low-res logits and full masks."""
    height, width = case.meta["image_hw"]
    for index, prompt in enumerate(case.meta["prompts"]):
        masks, scores, low_res = case.predict(index)
        expected_k = 3 if prompt["multimask"] else 1
        assert masks.shape == (expected_k, height, width) and masks.dtype == bool, index
        assert scores.shape == (expected_k,), index
        assert low_res.shape == (expected_k, 256, 256), index

        assert np.abs(scores - case.arrays[f"p{index}_iou"]).max() <= LOGITS_ATOL, index
        assert np.abs(low_res - case.arrays[f"p{index}_low_res"]).max() <= LOGITS_ATOL, index
        reference = case.reference_masks(index)
        agreement = (masks == reference).mean(axis=(1, 2))
        assert agreement.min() >= MASK_AGREEMENT, (index, agreement)
        # Guards against a vacuous pass: the reference masks are neither empty nor full.
        assert 0.0 < reference.mean() < 1.0, index


def test_the_servers_random_vit_t_is_the_reference_checkpoint(reference_dir):
    """backend.services.weights.random_model(), which the other tests and the random-weights server use, has exactly the
    weights the reference vit_t outputs were made with."""
    state = torch.load(reference_dir / "vit_t_seed0.pth", map_location="cpu", weights_only=True)
    ours = random_model().state_dict()
    assert set(state) == set(ours) and all(torch.equal(ours[key], value) for key, value in state.items())


def test_prompts_cover_every_kind(case):
    kinds = set()
    for prompt in case.meta["prompts"]:
        kinds.add(("points" in prompt, "box" in prompt, "mask_from" in prompt, prompt["multimask"]))
    assert (True, False, False, True) in kinds  # points, multi-mask
    assert any(mask for _, _, mask, _ in kinds)  # a mask prompt


def test_logits_threshold_to_masks(own_case):
    """return_logits gives the pre-threshold full-resolution logits of the same masks."""
    case = own_case
    args = case.prompt_args(0)
    logits, _, _ = case.predictor.predict(**args, return_logits=True)
    masks, _, _ = case.predict(0)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > case.model.mask_threshold, masks)


def test_batched_prompts_equal_single_prompts(photo_case):
    """predict_torch with a batch of B prompts gives each prompt's single result."""
    case = photo_case
    predictor = case.predictor
    transform = ResizeLongestSide(1024)
    height, width = case.meta["image_hw"]
    points = np.array([[[width * 0.5, height * 0.5]], [[width * 0.25, height * 0.75]]])
    coords = torch.as_tensor(transform.apply_coords(points, (height, width)), dtype=torch.float)
    labels = torch.ones((2, 1), dtype=torch.int)
    masks, scores, low_res = predictor.predict_torch(coords, labels, multimask_output=True)
    assert masks.shape == (2, 3, height, width)
    for b in range(2):
        single_masks, single_scores, single_low_res = predictor.predict(points[b], np.array([1]))
        np.testing.assert_allclose(scores[b].numpy(), single_scores, atol=1e-5)
        np.testing.assert_allclose(low_res[b].numpy(), single_low_res, atol=1e-4)
        assert (masks[b].numpy() == single_masks).mean() > 0.9999


def test_set_embedding_skips_encoder_and_matches(photo_case, monkeypatch):
    case = photo_case
    embedding = case.predictor.get_image_embedding().cpu().numpy()
    height, width = case.meta["image_hw"]
    predictor = SamPredictor(case.model)

    def fail(*args, **kwargs):
        raise AssertionError("the image encoder must not run after set_embedding")

    monkeypatch.setattr(case.model.image_encoder, "forward", fail)
    predictor.set_embedding(embedding, (height, width))
    assert predictor.input_size == case.predictor.input_size
    masks, scores, low_res = predictor.predict(**case.prompt_args(0))
    expected_masks, expected_scores, expected_low_res = case.predict(0)
    np.testing.assert_array_equal(masks, expected_masks)
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(low_res, expected_low_res)


def test_preprocess_shape_rounds_half_up():
    assert ResizeLongestSide.get_preprocess_shape(534, 800, 1024) == (684, 1024)
    assert ResizeLongestSide.get_preprocess_shape(1200, 1800, 1024) == (683, 1024)
    assert ResizeLongestSide.get_preprocess_shape(2048, 1, 1024) == (1024, 1)
    coords = ResizeLongestSide(1024).apply_coords(np.array([[800.0, 534.0]]), (534, 800))
    np.testing.assert_allclose(coords, [[1024.0, 684.0]])


def encode_with(case, attn_impl, precision):
    """The image embedding computed with another attention implementation / precision (settings restored)."""
    encoder = case.model.image_encoder
    saved = (getattr(encoder, "attn_impl", None), case.model.precision)
    try:
        if saved[0] is not None:
            encoder.attn_impl = attn_impl
        case.model.set_precision(precision)
        predictor = SamPredictor(case.model)
        predictor.set_image(case.image)
        return predictor
    finally:
        if saved[0] is not None:
            encoder.attn_impl = saved[0]
        case.model.set_precision(saved[1])


def test_math_attention_matches_fused_attention(photo_case):
    case = photo_case
    assert case.model.image_encoder.attn_impl == "sdpa"  # the default the other tests exercise
    embedding = encode_with(case, "math", "fp32").get_image_embedding().numpy()
    fused = case.predictor.get_image_embedding().numpy()
    assert np.abs(embedding - fused).max() <= 1e-4


def test_math_attention_matches_reference(dog):
    embedding = encode_with(dog, "math", "fp32").get_image_embedding().numpy()
    assert np.abs(embedding - dog.arrays["embedding"]).max() <= EMBEDDING_ATOL


def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union


@pytest.mark.parametrize(
    "name, precision, min_iou",
    [
        ("reduced_vit_photo", "bf16", 0.99),
        ("reduced_vit_photo", "fp16", 0.99),
        # Random-weight logits are tiny (|x| < 0.45), so near-zero pixels flip; pixel agreement still holds.
        ("vit_t_photo", "bf16", 0.98),
    ],
)
def test_reduced_precision_encoder_agrees_with_fp32(name, precision, min_iou):
    """Autocast (bf16 on CPUs with native bf16 and CUDA, fp16 on older GPUs) keeps the embedding and the fp32
    masks."""
    case = load_own_case(name)
    predictor = encode_with(case, "sdpa", precision)
    embedding = predictor.get_image_embedding()
    exact = case.predictor.get_image_embedding()
    assert embedding.dtype == torch.float32
    assert not torch.equal(embedding, exact)  # the knob really changed the computation
    cosine = torch.nn.functional.cosine_similarity(embedding.flatten(), exact.flatten(), dim=0).item()
    assert cosine >= 0.9995

    outputs = {}
    for index, prompt in enumerate(case.meta["prompts"]):
        args = case.prompt_args(index)
        if "mask_from" in prompt:
            _, scores, low_res = outputs[prompt["mask_from"]]
            args["mask_input"] = low_res[np.argmax(scores)][None]
        outputs[index] = predictor.predict(**args)
        for mask, exact_mask in zip(outputs[index][0], case.predict(index)[0], strict=True):
            assert 0.0 < exact_mask.mean() < 1.0, index  # neither empty nor full: the comparison is not vacuous
            assert (mask == exact_mask).mean() >= MASK_AGREEMENT, (index, precision)
            assert mask_iou(mask, exact_mask) >= min_iou, (index, precision)


def test_precision_choice():
    from backend.sam.sam import cpu_has_native_bf16, default_precision

    assert default_precision(torch.device("cpu")) == ("bf16" if cpu_has_native_bf16() else "fp32")
    with torch.device("meta"):
        model = build_sam(encoder_embed_dim=64, encoder_depth=1, encoder_num_heads=4, encoder_global_attn_indexes=[0])
    assert model.precision == "fp32"  # built models start on the exact path
    assert model.set_precision("bf16") == "bf16" and model.image_encoder.autocast_dtype == torch.bfloat16
    assert model.set_precision("fp32") == "fp32" and model.image_encoder.autocast_dtype is None
    with pytest.raises(ValueError, match="precision must be one of"):
        model.set_precision("int4")
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        model.image_encoder.attn_impl = "flash"


def test_cuda_precision_choice_without_a_gpu(monkeypatch):
    from backend.sam.sam import default_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert default_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert default_precision(torch.device("cuda")) == "fp16"


def test_encoder_batches_and_pads_windows_consistently():
    """A 16x16 token grid does not divide into 14x14 windows: padding, batching and both attention paths agree."""
    from backend.sam.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=256, embed_dim=32, depth=2, num_heads=2, use_rel_pos=True, window_size=14, global_attn_indexes=(1,)
    ).eval()
    for block in encoder.blocks:  # zero-initialised tables would hide relative-position mistakes
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    images = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        encoder.attn_impl = "math"
        exact = encoder(images)
        singles = torch.cat([encoder(images[:1]), encoder(images[1:])])
        encoder.attn_impl = "sdpa"
        fused = encoder(images)
    assert exact.shape == (2, 256, 16, 16)
    torch.testing.assert_close(singles, exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, exact, atol=1e-4, rtol=0)
    assert not torch.allclose(exact[0], exact[1], atol=1e-2)
