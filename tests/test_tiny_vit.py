"""MobileSAM's TinyViT encoder (vit_t): checkpoint layout and numerical parity with the reference (both marked
``reference``), reduced precision, and constructed cases for its attention, BatchNorm and batching."""

import json

import numpy as np
import pytest
import torch
from backend_fixtures import WIDE_PHOTO, photo_jpeg
from PIL import Image

from backend.sam.build import build_mobile_sam_encoder
from backend.sam.tiny_vit import Attention, Conv2d_BN, TinyViT
from backend.services.weights import random_model

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
PREFIX = "image_encoder."


def build_small(**overrides) -> TinyViT:
    # Same architecture at 256x256 input: 64 -> 32 -> 16 -> 16 tokens per side, so windows of 7 and 14
    # both need padding, and a forward pass takes milliseconds.
    config = dict(
        img_size=256,
        embed_dims=[64, 128, 160, 320],
        depths=[1, 1, 2, 1],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        drop_path_rate=0.0,
    )
    config.update(overrides)
    torch.manual_seed(0)
    model = TinyViT(**config)
    with torch.no_grad():
        # Variance-preserving weights: with the default initialisation the image's signal fades through
        # the ~15 convolutions and every image gives almost the same embedding.
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, fan_in**-0.5)
        # Non-trivial BatchNorm statistics and biases, so eval-mode paths are exercised.
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "attention_biases")) or name.endswith("bn.bias"):
                tensor.normal_(0.0, 0.1)
            elif name.endswith("bn.weight"):
                tensor.uniform_(0.5, 1.5)
    return model


def preprocess(path) -> torch.Tensor:
    """The reference's preprocessing: [1, 3, 1024, 1024] normalised, zero-padded bottom/right."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = 1024 / max(width, height)
    new_width, new_height = int(width * scale + 0.5), int(height * scale + 0.5)
    pixels = np.asarray(image.resize((new_width, new_height), Image.BILINEAR), dtype=np.float32)
    pixels = (pixels - PIXEL_MEAN) / PIXEL_STD
    batch = torch.zeros(1, 3, 1024, 1024)
    batch[0, :, :new_height, :new_width] = torch.from_numpy(pixels).permute(2, 0, 1)
    return batch


@pytest.fixture(scope="module")
def vit_t_keys(reference_dir):
    keys = json.loads((reference_dir / "checkpoint_keys.json").read_text())["vit_t"]
    return {name[len(PREFIX) :]: shape for name, shape in keys.items() if name.startswith(PREFIX)}


def encoder_with(state: dict[str, torch.Tensor]) -> TinyViT:
    """MobileSAM's encoder with the ``image_encoder.*`` entries of a SAM state_dict loaded."""
    model = build_mobile_sam_encoder()
    # eval() before loading: a bias table cached at eval() time would go stale and break parity.
    model.eval()
    encoder_state = {name[len(PREFIX) :]: value for name, value in state.items() if name.startswith(PREFIX)}
    model.load_state_dict(encoder_state, strict=True)
    return model


@pytest.fixture(scope="module")
def reference_encoder(reference_dir):
    return encoder_with(torch.load(reference_dir / "vit_t_seed0.pth", map_location="cpu", weights_only=True))


@pytest.fixture(scope="module")
def truck(reference_dir):
    embedding = np.load(reference_dir / "vit_t_seed0_truck.npz")["embedding"]
    return preprocess(reference_dir / "images" / "truck.jpg"), embedding


@pytest.fixture(scope="module")
def seeded_encoder():
    """The encoder of the server's seeded random vit_t (the same weights as the reference data's vit_t)."""
    return encoder_with(random_model().state_dict())


@pytest.fixture(scope="module")
def photo_batch():
    return preprocess(photo_jpeg(*WIDE_PHOTO))


def test_state_dict_matches_mobile_sam_checkpoint_on_meta_device(vit_t_keys):
    with torch.device("meta"):
        model = build_mobile_sam_encoder()
    ours = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert set(ours) - set(vit_t_keys) == set(), "keys that mobile_sam.pt does not have"
    assert set(vit_t_keys) - set(ours) == set(), "keys of mobile_sam.pt the model lacks"
    assert {name: shape for name, shape in ours.items() if shape != vit_t_keys[name]} == {}

    checkpoint = {name: torch.empty(shape, device="meta") for name, shape in vit_t_keys.items()}
    model.load_state_dict(checkpoint, strict=True)
    assert all(tensor.is_meta for tensor in model.state_dict().values())


def test_embedding_matches_mobile_sam_reference(reference_encoder, truck):
    image, expected = truck
    with torch.inference_mode():
        embedding = reference_encoder(image)
    assert embedding.shape == (1, 256, 64, 64)
    assert embedding.dtype == torch.float32
    error = np.abs(embedding.numpy() - expected).max()
    assert error <= 1e-3, f"max abs error {error:.2e} vs the MobileSAM reference"


def test_bf16_autocast_stays_close_to_fp32(seeded_encoder, photo_batch):
    with torch.inference_mode():
        expected = seeded_encoder(photo_batch)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = seeded_encoder(photo_batch)
    assert embedding.shape == (1, 256, 64, 64)
    assert embedding.dtype == torch.float32, "the neck's LayerNorm2d returns float32 under autocast"
    ours = embedding.flatten().double()
    fp32 = expected.flatten().double()
    cosine = torch.nn.functional.cosine_similarity(ours, fp32, dim=0).item()
    assert cosine >= 0.99, f"bf16 embedding cosine {cosine:.4f} vs fp32"


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_table_follows_mobile_sam_offset_order(window):
    # MobileSAM numbers each (|dy|, |dx|) offset in order of first appearance over all point pairs;
    # the checkpoint's attention_biases columns are in that order. (The seeded reference weights have
    # all-zero biases, so the parity test cannot see this.)
    points = [(row, col) for row in range(window) for col in range(window)]
    offsets = {}
    expected = [
        [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)) for q in points] for p in points
    ]
    attention = Attention(dim=32, key_dim=16, num_heads=2, attn_ratio=1, resolution=(window, window))
    assert attention.attention_bias_idxs.tolist() == expected
    assert attention.attention_biases.shape == (2, len(offsets))


def test_attention_bias_steers_each_token_to_its_horizontal_neighbours():
    window, dim = 7, 8
    attention = Attention(dim=dim, key_dim=dim, num_heads=1, attn_ratio=1, resolution=(window, window)).eval()
    with torch.no_grad():
        # q = k = 0, so only the bias decides where each token looks; proj is the identity.
        attention.qkv.weight[: 2 * dim].zero_()
        attention.qkv.bias[: 2 * dim].zero_()
        attention.proj.weight.copy_(torch.eye(dim))
        attention.proj.bias.zero_()
        attention.attention_biases.fill_(-30.0)
        attention.attention_biases[0, 1] = 30.0  # offset (dy, dx) = (0, 1)
    torch.manual_seed(3)
    tokens = torch.randn(1, window * window, dim)
    with torch.inference_mode():
        output = attention(tokens).view(window, window, dim)
        values = attention.qkv(attention.norm(tokens))[0, :, 2 * dim :].view(window, window, dim)
    expected = torch.empty_like(values)
    expected[:, 1:-1] = (values[:, :-2] + values[:, 2:]) / 2
    expected[:, 0] = values[:, 1]
    expected[:, -1] = values[:, -2]
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 8])
def test_eval_conv_bn_uses_running_statistics(groups):
    # The seeded reference weights have default BatchNorm statistics (mean 0, var 1), so parity alone
    # would not notice running statistics being ignored or folded wrongly.
    torch.manual_seed(4)
    layer = Conv2d_BN(8, 16, kernel_size=3, stride=2, padding=1, groups=groups)
    with torch.no_grad():
        layer.bn.running_mean.normal_(0.0, 1.0)
        layer.bn.running_var.uniform_(0.1, 3.0)
        layer.bn.weight.normal_(1.0, 0.5)
        layer.bn.bias.normal_(0.0, 0.5)
    layer.eval()
    images = torch.randn(2, 8, 20, 20)
    conv_output = torch.nn.functional.conv2d(images, layer.c.weight, None, 2, 1, 1, groups)
    expected = (conv_output - layer.bn.running_mean[:, None, None]) / torch.sqrt(
        layer.bn.running_var[:, None, None] + layer.bn.eps
    ) * layer.bn.weight[:, None, None] + layer.bn.bias[:, None, None]
    with torch.inference_mode():
        output = layer(images)
    assert output.shape == (2, 16, 10, 10)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_module_default_is_fp32():
    model = build_small()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_model_cast_to_bf16_runs_and_returns_bf16():
    model = build_small().eval()
    torch.manual_seed(5)
    images = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        expected = model(images)
        embedding = model.to(torch.bfloat16)(images.to(torch.bfloat16))
    assert embedding.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(embedding.double().flatten(), expected.double().flatten(), dim=0)
    assert cosine >= 0.99


def test_images_in_a_batch_do_not_mix():
    model = build_small().eval()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 256, 256)
    with torch.inference_mode():
        together = model(images)
        alone = torch.cat([model(image[None]) for image in images])
    assert together.shape == (3, 256, 16, 16)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert (together[0] - together[1]).abs().max() > 1e-2


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    plain = build_small()
    checkpointed = build_small(use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    torch.manual_seed(2)
    images = torch.randn(2, 3, 256, 256)
    outputs = []
    for model in (plain, checkpointed):
        model.train()
        output = model(images)
        output.square().mean().backward()
        outputs.append((output.detach(), model.layers[1].blocks[0].attn.attention_biases.grad))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[0][1], outputs[1][1])
    assert outputs[0][1].abs().sum() > 0


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 256, 256), "expected an image batch"),
        ((1, 1, 256, 256), "expected an image batch"),
        ((1, 3, 200, 256), "padded to 256x256"),
    ],
)
def test_wrong_input_shape_is_a_clear_error(shape, message):
    model = build_small().eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))
