"""The fused CPU path (``SAM_PRECISION=fused``: oneDNN convolution/linear kernels with BatchNorm and GELU fused)
on the server's seeded random vit_t: within the accuracy bounds, the same checkpoint format, and fp32 exact again
after it."""

import numpy as np
import pytest
import torch
from skimage import data

from backend.runtime import encoder_paths
from backend.sam import SamPredictor
from backend.sam.fused_kernels import FUSED_MODULES, FusedConv2dBN, FusedMBConv, LinearGELU, fused_supported
from backend.sam.int8_linear import Int8Linear, int8_supported
from backend.sam.tiny_vit import TinyViT
from backend.services.weights import random_model

pytestmark = pytest.mark.skipif(not fused_supported(), reason="this torch has no oneDNN fused kernels")

PROMPTS = [
    dict(point_coords=np.array([[256, 200]]), point_labels=np.array([1]), multimask_output=True),
    dict(point_coords=np.array([[150, 300], [350, 120]]), point_labels=np.array([1, 0]), multimask_output=False),
    dict(box=np.array([100, 80, 420, 460]), multimask_output=True),
]


@pytest.fixture(scope="module")
def vit_t():
    model = random_model().eval()
    yield model
    model.set_precision("fp32")


def embedding_and_masks(model, image):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    out = [predictor.predict(**prompt)[0] for prompt in PROMPTS]
    return predictor.get_image_embedding(), np.concatenate(out)


def test_fused_path_within_the_accuracy_bounds_and_fp32_exact_after_it(vit_t):
    image = data.astronaut()
    vit_t.set_precision("fp32")
    state = {name: tensor.clone() for name, tensor in vit_t.state_dict().items()}
    exact, exact_masks = embedding_and_masks(vit_t, image)

    assert vit_t.set_precision("fused") == "fused"
    assert vit_t.precision == "fused" and vit_t.encoder_path == encoder_paths.LABELS["fused"]
    modules = list(vit_t.image_encoder.modules())
    # Every Conv2d_BN of TinyViT-5M (27; the neck has plain convolutions) and every MLP's first layer (10).
    assert sum(isinstance(m, FusedConv2dBN) for m in modules) == 27
    assert sum(isinstance(m, LinearGELU) for m in modules) == 10
    assert sum(isinstance(m, FusedMBConv) for m in modules) == 2  # the first stage, in bands of rows
    assert vit_t.state_dict().keys() == state.keys()  # same checkpoint format
    fast, fast_masks = embedding_and_masks(vit_t, image)
    assert not torch.equal(fast, exact)  # the path really changed the computation (BatchNorm folded once)
    cosine = torch.nn.functional.cosine_similarity(fast.flatten().double(), exact.flatten().double(), dim=0).item()
    assert cosine >= 0.99999 >= encoder_paths.COSINE_BOUND
    ious = [
        np.logical_and(a, b).sum() / np.logical_or(a, b).sum() for a, b in zip(fast_masks, exact_masks, strict=True)
    ]
    assert np.mean(ious) >= 0.99 and 0 < exact_masks.mean() < 1

    # Back to fp32 is the exact path again, bit for bit (parity tests rely on it).
    assert vit_t.set_precision("fp32") == "fp32" and vit_t.precision == "fp32"
    assert not any(isinstance(m, FUSED_MODULES) for m in vit_t.image_encoder.modules())
    again, _ = embedding_and_masks(vit_t, image)
    assert torch.equal(again, exact)
    for name, tensor in vit_t.state_dict().items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.skipif(not int8_supported(), reason="this torch has no quantized engine")
def test_tiny_vit_int8_path_within_the_accuracy_bounds(vit_t):
    image = data.astronaut()
    vit_t.set_precision("fp32")
    exact, exact_masks = embedding_and_masks(vit_t, image)

    assert vit_t.set_precision("int8") == "int8" and vit_t.precision == "int8"
    int8 = [name for name, m in vit_t.image_encoder.named_modules() if isinstance(m, Int8Linear)]
    assert int8 == ["layers.1.blocks.0.mlp.fc2", "layers.1.blocks.1.mlp.fc2"]
    assert sum(isinstance(m, FusedConv2dBN) for m in vit_t.image_encoder.modules()) == 27  # the rest as "fused"
    fast, fast_masks = embedding_and_masks(vit_t, image)
    cosine = torch.nn.functional.cosine_similarity(fast.flatten().double(), exact.flatten().double(), dim=0).item()
    assert encoder_paths.COSINE_BOUND <= cosine < 1 - 1e-9
    ious = [
        np.logical_and(a, b).sum() / np.logical_or(a, b).sum() for a, b in zip(fast_masks, exact_masks, strict=True)
    ]
    assert np.mean(ious) >= 0.99

    vit_t.set_precision("fp32")
    again, _ = embedding_and_masks(vit_t, image)
    assert torch.equal(again, exact)


def small_tiny_vit():
    torch.manual_seed(0)
    encoder = TinyViT(
        img_size=128,
        embed_dims=[16, 32, 40, 80],
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 4],
        window_sizes=[7, 7, 7, 7],
        num_classes=0,
    ).eval()
    for module in encoder.modules():  # BatchNorm statistics other than 0 / 1, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.running_mean, -0.5, 0.5)
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    return encoder


def test_banded_mbconv_equals_the_whole_image_one(monkeypatch):
    from backend.sam import fused_kernels

    encoder = small_tiny_vit()
    fused_kernels.fuse(encoder)
    block = encoder.layers[0].blocks[0]
    assert isinstance(block, FusedMBConv)
    x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = block(x)  # 2 x 32 x 64 channels x 4 B: under _BAND_BYTES, one band
        for rows in (1, 5, 16, 31):  # one row, a ragged last band, halves, a last band of one row
            monkeypatch.setattr(fused_kernels, "_BAND_BYTES", rows * 2 * 32 * 64 * 4)
            torch.testing.assert_close(block(x), whole, atol=1e-6, rtol=1e-6)


def test_fused_modules_compute_unfused_under_autograd():
    from backend.sam import fused_kernels

    encoder = small_tiny_vit()
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        exact = encoder(x)
    fused_kernels.fuse(encoder)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(x), exact, atol=1e-5, rtol=1e-4)  # batch of 2, BatchNorm folded
    y = encoder(x.requires_grad_())  # with autograd: the plain modules' computation, gradients flow
    torch.testing.assert_close(y.detach(), exact, atol=1e-5, rtol=1e-4)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    attention = encoder.layers[1].blocks[0].attn
    assert attention.fixed_bias is not None and attention.attention_biases.grad is not None  # not the fixed copy


def test_math_formulation_is_mobile_sams_and_close_to_the_fast_one():
    encoder = small_tiny_vit()
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        fast = encoder(x)
        encoder.attn_impl = "math"
        assert all(not m.fold_bn for m in encoder.modules() if type(m).__name__ == "Conv2d_BN")
        plain = encoder(x)
        encoder.attn_impl = "sdpa"
        assert torch.equal(encoder(x), fast)
    torch.testing.assert_close(plain, fast, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        encoder.attn_impl = "flash"


def test_formulation_set_while_fused_holds_after_unfusing():
    from backend.sam import fused_kernels
    from backend.sam.tiny_vit import Conv2d_BN

    encoder = small_tiny_vit()
    fused_kernels.fuse(encoder)
    encoder.attn_impl = "math"  # the benchmark sets the formulation before the path
    fused_kernels.unfuse(encoder)
    conv_bns = [m for m in encoder.modules() if isinstance(m, Conv2d_BN)]
    assert len(conv_bns) == 17 and not any(m.fold_bn for m in conv_bns)
    encoder.attn_impl = "sdpa"
    assert all(m.fold_bn for m in conv_bns)
