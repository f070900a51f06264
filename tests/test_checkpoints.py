"""Official checkpoint layouts load strictly, and bad checkpoints give one clear CheckpointError."""

import json

import pytest
import torch
from backend_fixtures import REDUCED_VIT_CONFIG, reduced_checkpoint

from backend.sam import CheckpointError, build_sam, sam_model_registry

MODEL_TYPES = ["vit_b", "vit_l", "vit_h", "vit_t"]


@pytest.fixture(scope="module")
def checkpoint_keys(reference_dir):
    """The official checkpoints' {key: shape} (Meta's SAM and MobileSAM), from the reference data."""
    return json.loads((reference_dir / "checkpoint_keys.json").read_text())


@pytest.fixture(scope="module")
def model_layouts():
    """Our registry's {key: shape} for each model type (built on the meta device: no memory, no weights); the
    parity test above holds them equal to the official checkpoints'."""
    layouts = {}
    for model_type in MODEL_TYPES:
        with torch.device("meta"):
            model = sam_model_registry[model_type]()
        layouts[model_type] = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    return layouts


def fake_checkpoint(path, shapes, value=0.25):
    """A state_dict with official names and shapes but one stored number per tensor (stride-0 views)."""
    state = {name: torch.full((), value).expand(shape) for name, shape in shapes.items()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("model_type", MODEL_TYPES + ["default"])
def test_state_dict_matches_official_checkpoint(model_type, checkpoint_keys):
    with torch.device("meta"):
        model = sam_model_registry[model_type]()
    expected = checkpoint_keys["vit_h" if model_type == "default" else model_type]
    found = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert sorted(set(found) - set(expected)) == []
    assert sorted(set(expected) - set(found)) == []
    assert {k: v for k, v in found.items() if v != expected[k]} == {}


def test_official_layout_loads_strictly(tmp_path, model_layouts):
    path = fake_checkpoint(tmp_path / "mobile_sam.pt", model_layouts["vit_t"], value=0.25)
    model = sam_model_registry["vit_t"](checkpoint=path)
    assert model.mask_decoder.iou_token.weight[0, 0].item() == 0.25
    assert model.image_encoder.patch_embed.seq[0].c.weight.flatten()[0].item() == 0.25
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])


def test_unknown_model_type():
    with pytest.raises(CheckpointError) as error:
        sam_model_registry["vit_x"]
    message = str(error.value)
    assert "vit_x" in message and "vit_b" in message and "vit_t" in message
    assert isinstance(error.value, KeyError)


@pytest.mark.parametrize(
    "found_type, requested_type",
    [("vit_l", "vit_b"), ("vit_b", "vit_h"), ("vit_t", "vit_b"), ("vit_b", "vit_t")],
)
def test_checkpoint_of_another_type(tmp_path, model_layouts, found_type, requested_type):
    path = fake_checkpoint(tmp_path / f"{found_type}.pth", model_layouts[found_type])
    with pytest.raises(CheckpointError) as error:
        sam_model_registry[requested_type](checkpoint=path)
    message = str(error.value)
    assert f"holds {found_type}" in message
    assert f"model to build is {requested_type}" in message


def test_reduced_checkpoint_given_as_vit_h():
    with pytest.raises(CheckpointError, match=r"embed dim 64, 4 blocks.*model to build is vit_h"):
        build_sam(reduced_checkpoint())


def test_truncated_checkpoint(tmp_path):
    data = reduced_checkpoint().read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        sam_model_registry["vit_b"](checkpoint=path)
    assert "expected a PyTorch state_dict" in str(error.value)


def test_truncated_legacy_checkpoint(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="legacy pickle .* truncated"):
        sam_model_registry["vit_b"](checkpoint=path)


@pytest.mark.parametrize("content", [b"", b"<html>404 Not Found</html>", b"\xff\xd8\xff\xe0JFIF"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="expected a PyTorch state_dict") as error:
        sam_model_registry["vit_b"](checkpoint=path)
    assert ("empty file" in str(error.value)) == (content == b"")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        sam_model_registry["vit_b"](checkpoint=tmp_path / "absent.pth")


def test_pickle_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a SAM state_dict: .* found a list"):
        sam_model_registry["vit_b"](checkpoint=path)

    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="holds a state_dict that is not a SAM model"):
        sam_model_registry["vit_b"](checkpoint=path)


def test_missing_and_reshaped_keys_are_named(tmp_path):
    state = torch.load(reduced_checkpoint(), map_location="cpu", weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        build_sam(path, **REDUCED_VIT_CONFIG)
    message = str(error.value)
    assert "1 missing keys (e.g. mask_decoder.iou_token.weight)" in message
    assert "mask_decoder.mask_tokens.weight [3, 256] (expected [4, 256])" in message


def test_nested_state_dict_loads(tmp_path):
    state = torch.load(reduced_checkpoint(), map_location="cpu", weights_only=True)
    path = tmp_path / "nested.pth"
    torch.save({"model": state}, path)
    model = build_sam(path, **REDUCED_VIT_CONFIG)
    assert torch.equal(model.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
