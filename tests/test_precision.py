"""Encoder paths: what `SAM_PRECISION=auto` picks per capability set, the measurement cache, the int8 path's accuracy."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from skimage import data

from backend.runtime import encoder_paths
from backend.runtime.encoder_paths import Capabilities, choose
from backend.sam import SamPredictor, build_sam
from backend.sam.fused_kernels import FUSED_MODULES, InplaceGELU
from backend.sam.int8_linear import Int8Linear

AMX = Capabilities(
    cpu_model="Xeon (Sapphire Rapids)",
    cpu_flags=frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}),
)
VNNI = Capabilities(cpu_model="Xeon (Cascade Lake)", cpu_flags=frozenset({"avx2", "avx512f", "avx512_vnni"}), threads=2)
AVX_VNNI = Capabilities(cpu_model="Core (Alder Lake)", cpu_flags=frozenset({"avx2", "avx_vnni"}))
AVX2 = Capabilities(cpu_model="Core (Haswell)", cpu_flags=frozenset({"avx2", "fma"}))
CUDA_BF16 = Capabilities(device_type="cuda", cuda_bf16=True)
CUDA_FP16 = Capabilities(device_type="cuda", cuda_bf16=False)
VIT, TINY = "ImageEncoderViT", "TinyViT"


def never_measure(precision):
    raise AssertionError(f"the capabilities settle it; nothing should be measured ({precision})")


@pytest.mark.parametrize(
    "caps, encoder, expected",
    [
        (AMX, VIT, ("bf16",)),
        (AMX, TINY, ("bf16",)),
        (VNNI, VIT, ("int8", "fp32")),
        (AVX_VNNI, VIT, ("int8", "fp32")),
        (VNNI, TINY, ("int8", "fused", "fp32")),  # TinyViT: int8 (a few layers) on top of fused kernels
        (VNNI, "MobileSamImageEncoder", ("int8", "fused", "fp32")),  # the server's TinyViT subclass
        (AVX2, TINY, ("fused", "fp32")),  # fused kernels are float32: no VNNI needed
        (Capabilities(cpu_flags=VNNI.cpu_flags, mkldnn=False), TINY, ("int8", "fp32")),  # no oneDNN kernels
        (Capabilities(cpu_flags=AVX2.cpu_flags, mkldnn=False), TINY, ("fp32",)),
        (AVX2, VIT, ("fp32",)),
        (Capabilities(), VIT, ("fp32",)),  # no /proc/cpuinfo (not Linux): the floor
        (Capabilities(cpu_flags=AMX.cpu_flags, mkldnn=False), VIT, ("int8", "fp32")),  # bf16 flags, no oneDNN
        (Capabilities(cpu_flags=VNNI.cpu_flags, int8_engine=False), VIT, ("fp32",)),
        (CUDA_BF16, VIT, ("bf16",)),
        (CUDA_FP16, TINY, ("fp16",)),
    ],
)
def test_candidates_per_capability_set(caps, encoder, expected):
    assert encoder_paths.candidates(caps, encoder) == expected


@pytest.mark.parametrize("caps, expected", [(AMX, "bf16"), (AVX2, "fp32"), (CUDA_BF16, "bf16"), (CUDA_FP16, "fp16")])
def test_capabilities_alone_decide_without_measuring(tmp_path, caps, expected):
    choice = choose(caps, VIT, "ImageEncoderViT:1", never_measure, tmp_path)
    assert choice.precision == expected and choice.reason.startswith("capabilities")
    assert not (tmp_path / encoder_paths.CACHE_FILE).exists()
    assert choice.label == encoder_paths.LABELS[expected]


class FakeMeasure:
    """Measured (seconds, cosine) per path, counting the calls."""

    def __init__(self, **results):
        self.results, self.calls = results, []

    def __call__(self, precision):
        self.calls.append(precision)
        return self.results[precision]


@pytest.mark.parametrize(
    "int8, expected",
    [
        ((5.0, 0.9999), "int8"),  # faster and accurate
        ((5.0, 0.9990), "fp32"),  # faster but outside the cosine bound
        ((9.5, 0.9999), "fp32"),  # accurate but not faster by MIN_GAIN: never slower than fp32
    ],
)
def test_vnni_cpu_measures_and_keeps_the_fastest_accurate_path(tmp_path, int8, expected):
    measure = FakeMeasure(int8=int8, fp32=(10.0, 1.0))
    choice = choose(VNNI, VIT, "ImageEncoderViT:1", measure, tmp_path)
    assert choice.precision == expected
    assert measure.calls == ["int8", "fp32"]
    assert choice.measured["int8"] == {"seconds": int8[0], "cosine": int8[1]}


@pytest.mark.parametrize(
    "fused, expected",
    [
        ((9.5, 1.0), "fused"),  # float32 too: a smaller margin over fp32 suffices (MIN_GAINS)
        ((9.9, 1.0), "fp32"),  # within noise of fp32: never slower than fp32
        ((5.0, 0.999), "fp32"),  # outside the cosine bound (a broken kernel)
    ],
)
def test_tiny_vit_measures_the_fused_path(tmp_path, fused, expected):
    measure = FakeMeasure(fused=fused, fp32=(10.0, 1.0))
    choice = choose(AVX2, TINY, "TinyViT:1", measure, tmp_path)
    assert choice.precision == expected and measure.calls == ["fused", "fp32"]


@pytest.mark.parametrize(
    "int8, fused, expected",
    [
        ((7.5, 0.9999), (8.5, 1.0), "int8"),  # fastest, accurate, 1.13x over fused
        ((8.4, 0.9999), (8.5, 1.0), "fused"),  # int8 1.19x over fp32 but not MIN_GAIN over the more exact fused
        ((7.5, 0.9999), (7.0, 1.0), "fused"),  # fused faster still
        ((7.5, 0.9990), (9.5, 1.0), "fused"),  # int8 outside the cosine bound
        ((9.5, 0.9999), (9.9, 1.0), "fp32"),  # nothing beats fp32 by its margin
    ],
)
def test_tiny_vit_on_a_vnni_cpu_measures_int8_fused_and_fp32(tmp_path, int8, fused, expected):
    measure = FakeMeasure(int8=int8, fused=fused, fp32=(10.0, 1.0))
    assert choose(VNNI, TINY, "TinyViT:1", measure, tmp_path).precision == expected
    assert measure.calls == ["int8", "fused", "fp32"]  # the floor last: warm-up effects fall on the others


def test_measurement_is_cached_once_and_reused(tmp_path):
    measure = FakeMeasure(int8=(5.0, 0.9999), fp32=(10.0, 1.0))
    first = choose(VNNI, VIT, "ImageEncoderViT:1", measure, tmp_path)
    assert first.precision == "int8" and first.reason.startswith("measured now")
    cache_file = tmp_path / encoder_paths.CACHE_FILE
    written = cache_file.read_bytes()
    entry = next(iter(json.loads(written)["entries"].values()))
    assert entry["precision"] == "int8" and entry["encoder"] == "ImageEncoderViT:1" and entry["threads"] == 2

    again = choose(VNNI, VIT, "ImageEncoderViT:1", never_measure, tmp_path)
    assert again.precision == "int8" and again.reason.startswith("measured at first start")
    assert again.measured == first.measured
    assert cache_file.read_bytes() == written  # reused, not rewritten

    # Another torch, another model or another CPU is another key: measured again, both entries kept.
    for caps, key in [
        (dataclasses.replace(VNNI, torch_version="9.9"), "ImageEncoderViT:1"),
        (VNNI, "ImageEncoderViT:2"),
        (AVX_VNNI, "ImageEncoderViT:1"),
    ]:
        other = FakeMeasure(int8=(12.0, 0.9999), fp32=(10.0, 1.0))
        assert choose(caps, VIT, key, other, tmp_path).precision == "fp32"
        assert other.calls == ["int8", "fp32"]
    assert len(json.loads(cache_file.read_text())["entries"]) == 4


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"version": 0, "entries": {}}),
        json.dumps([1, 2]),
        None,  # an entry naming a path that is not a candidate here
        "",
    ],
)
def test_invalid_cache_is_ignored_and_replaced(tmp_path, content):
    cache_file = tmp_path / encoder_paths.CACHE_FILE
    key = encoder_paths.cache_key(VNNI, "ImageEncoderViT:1")
    if content is None:
        content = json.dumps({"version": 1, "entries": {key: {"precision": "bf16", "measured": {}}}})
    cache_file.write_text(content)
    measure = FakeMeasure(int8=(5.0, 0.9999), fp32=(10.0, 1.0))
    assert choose(VNNI, VIT, "ImageEncoderViT:1", measure, tmp_path).precision == "int8"
    assert measure.calls == ["int8", "fp32"]
    assert json.loads(cache_file.read_text())["entries"][key]["precision"] == "int8"


def test_unwritable_cache_still_chooses(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    measure = FakeMeasure(int8=(5.0, 0.9999), fp32=(10.0, 1.0))
    assert choose(VNNI, VIT, "ImageEncoderViT:1", measure, blocker / "sub").precision == "int8"


def test_detect_honours_onednn_isa_cap(monkeypatch):
    monkeypatch.setattr(encoder_paths, "_cpuinfo", lambda: ("Xeon", set(AMX.cpu_flags)))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert encoder_paths.detect().native_bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    caps = encoder_paths.detect()
    assert not caps.native_bf16 and caps.vnni
    assert "AVX512-BF16" not in caps.describe() and "AVX512-VNNI" in caps.describe()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert encoder_paths.detect().native_bf16  # bf16 without AMX is still native


# The int8 path on seeded random weights (a small ViT: fast) ------------------------------------------------


@pytest.fixture(scope="module")
def small_sam():
    torch.manual_seed(0)
    model = build_sam(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1]
    ).eval()
    yield model
    model.set_precision("fp32")


def masks(model, image, prompts):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    out = [predictor.predict(**prompt)[0] for prompt in prompts]
    return predictor.get_image_embedding(), np.concatenate(out)


PROMPTS = [
    dict(point_coords=np.array([[256, 200]]), point_labels=np.array([1]), multimask_output=True),
    dict(point_coords=np.array([[150, 300], [350, 120]]), point_labels=np.array([1, 0]), multimask_output=False),
    dict(box=np.array([100, 80, 420, 460]), multimask_output=True),
]


def test_int8_path_within_the_accuracy_bounds(small_sam):
    image = data.astronaut()
    small_sam.set_precision("fp32")
    state_keys = list(small_sam.state_dict())
    exact, exact_masks = masks(small_sam, image, PROMPTS)

    assert small_sam.set_precision("int8") == "int8"
    assert small_sam.precision == "int8" and small_sam.encoder_path == "int8 linear + fused attention"
    assert list(small_sam.state_dict()) == state_keys  # same parameters, same checkpoint format
    int8_layers = sum(isinstance(m, Int8Linear) for m in small_sam.image_encoder.modules())
    assert int8_layers == 2 * 3  # qkv, lin1, lin2 per block; attn.proj stays float32
    assert all(isinstance(block.mlp.act, InplaceGELU) for block in small_sam.image_encoder.blocks)
    fast, fast_masks = masks(small_sam, image, PROMPTS)
    assert not torch.equal(fast, exact)  # the path really changed the computation
    cosine = torch.nn.functional.cosine_similarity(fast.flatten(), exact.flatten(), dim=0).item()
    assert cosine >= encoder_paths.COSINE_BOUND
    ious = [
        np.logical_and(a, b).sum() / np.logical_or(a, b).sum() for a, b in zip(fast_masks, exact_masks, strict=True)
    ]
    assert np.mean(ious) >= 0.99

    # Back to fp32 is the exact path again (parity tests rely on it).
    assert all(not isinstance(block.attn.proj, Int8Linear) for block in small_sam.image_encoder.blocks)
    assert small_sam.set_precision("fp32") == "fp32" and small_sam.precision == "fp32"
    assert not any(isinstance(m, (Int8Linear, *FUSED_MODULES)) for m in small_sam.image_encoder.modules())
    assert all(type(block.mlp.act) is torch.nn.GELU for block in small_sam.image_encoder.blocks)
    again, _ = masks(small_sam, image, PROMPTS[:1])
    assert torch.equal(again, exact)


def test_auto_measures_a_real_model_on_a_vnni_cpu(small_sam, tmp_path, caplog):
    caplog.set_level("INFO", logger="backend.runtime.encoder_paths")
    choice = encoder_paths.auto_choice(small_sam, tmp_path, caps=VNNI)
    assert choice.precision in ("int8", "fp32")
    assert set(choice.measured) == {"int8", "fp32"} and choice.measured["fp32"]["cosine"] == pytest.approx(1.0)
    assert choice.measured["int8"]["cosine"] >= encoder_paths.COSINE_BOUND
    assert "measuring encoder paths int8, fp32" in caplog.text
    cached = encoder_paths.auto_choice(small_sam, tmp_path, caps=VNNI)
    assert cached.precision == choice.precision and cached.reason.startswith("measured at first start")


def test_auto_on_this_machine_is_logged_and_reported(small_sam, tmp_path, caplog):
    caplog.set_level("INFO", logger="backend.sam.sam")
    precision = small_sam.set_precision("auto", cache_dir=tmp_path)
    assert precision == small_sam.precision == small_sam.precision_choice.precision
    assert f"encoder path: {encoder_paths.LABELS[precision]}" in caplog.text
    small_sam.set_precision("fp32")


@pytest.mark.parametrize("precision", ["int8", "fused"])
def test_cpu_only_paths_need_a_cpu(precision):
    with torch.device("meta"):
        model = build_sam(encoder_embed_dim=64, encoder_depth=1, encoder_num_heads=4, encoder_global_attn_indexes=[0])
    with pytest.raises(ValueError, match=f"{precision} needs a CPU"):
        model.set_precision(precision)
    assert model.precision == "fp32"


def test_banded_relative_position_mask_matches_the_reference(monkeypatch):
    """The fp32 fused path builds its bias in bands of queries; any band size gives the math path's result."""
    from backend.sam import image_encoder
    from backend.sam.image_encoder import Attention

    torch.manual_seed(0)
    attention = Attention(64, num_heads=4, use_rel_pos=True, input_size=(12, 12)).eval()
    torch.nn.init.normal_(attention.rel_pos_h, std=0.5)
    torch.nn.init.normal_(attention.rel_pos_w, std=0.5)
    x = torch.randn(2, 12, 12, 64)
    with torch.inference_mode():
        attention.attn_impl = "math"
        reference = attention(x)
        attention.attn_impl = "sdpa"
        for mask_bytes in (1 << 30, 2 * 4 * 144 * 4 * 50, 1):  # whole, bands of 50 queries, one query at a time
            monkeypatch.setattr(image_encoder, "_MASK_BYTES", mask_bytes)
            torch.testing.assert_close(attention(x), reference, atol=2e-5, rtol=1e-4)


def test_api_reports_the_encoder_path(small_sam, tmp_path):
    from backend.server.app import create_app
    from backend.services.weights import WeightsInfo

    app = create_app(
        {
            "model": small_sam,
            "weights_info": WeightsInfo("vit_b", "real", "small-vit-test", None, "seeded random small ViT"),
            "decoders": [],
            "data_dir": str(tmp_path),
            "device": "cpu",
            "precision": "int8",
            "secret": "test-secret",
            "TESTING": True,
        }
    )
    try:
        client = app.test_client()
        info = client.get("/api/model").get_json()
        assert (info["precision"], info["encoder_path"]) == ("int8", "int8 linear + fused attention")
        assert client.get("/healthz").get_json()["encoder"]["encoder_path"] == "int8 linear + fused attention"
    finally:
        app.extensions["sam"].encoder.close()
        small_sam.set_precision("fp32")
