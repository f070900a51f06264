"""SAM 2 without the reference data: a tiny random SAM 2.1 built from a config, its checkpoint loading, the
predictor's shapes and prompt handling, and the automatic mask generator."""

import numpy as np
import pytest
import torch

from backend.sam.build import UnknownModelTypeError
from backend.sam.checkpoint import CheckpointError
from backend.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, build_sam2, model_config
from backend.sam2.transforms import SAM2Transforms

# A Hiera of five blocks and 8 channels: a real SAM 2.1 graph (decoder at full width) that builds fast.
TINY_CONFIG = {
    "base": "sam2.1_hiera_t",
    "trunk": {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
    "neck": {"backbone_channel_list": [64, 32, 16, 8]},
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam2(TINY_CONFIG)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(tiny_model, image):
    predictor = SAM2ImagePredictor(tiny_model)
    predictor.set_image(image)
    return predictor


def test_features_have_the_decoders_shapes(predictor):
    features = predictor._features
    assert tuple(features["image_embed"].shape) == (1, 256, 64, 64)
    assert [tuple(f.shape) for f in features["high_res_feats"]] == [(1, 32, 256, 256), (1, 64, 128, 128)]


def test_predict_shapes_for_each_kind_of_prompt(predictor, image):
    height, width = image.shape[:2]
    masks, iou, low_res = predictor.predict(point_coords=np.array([[45.0, 30.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, height, width) and iou.shape == (3,) and low_res.shape == (3, 256, 256)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert np.all((iou >= 0) & (iou <= 1))  # the IoU head ends in a sigmoid

    masks, iou, low_res = predictor.predict(box=np.array([10, 5, 70, 50]), multimask_output=False)
    assert masks.shape == (1, height, width) and iou.shape == (1,)
    assert np.abs(low_res).max() <= 32.0

    masks, _, _ = predictor.predict(mask_input=low_res, multimask_output=False, return_logits=True)
    assert masks.dtype == np.float32 and masks.shape == (1, height, width)


def test_batched_prompts_equal_one_at_a_time(predictor):
    points = np.array([[[10.0, 10.0]], [[80.0, 50.0]]])
    labels = np.ones((2, 1), dtype=np.int64)
    masks, iou, _ = predictor.predict(point_coords=points, point_labels=labels, return_logits=True)
    assert masks.shape == (2, 3, 60, 90)
    for i in range(2):
        one_masks, one_iou, _ = predictor.predict(point_coords=points[i], point_labels=labels[i], return_logits=True)
        assert np.allclose(one_iou, iou[i], atol=1e-5) and np.allclose(one_masks, masks[i], atol=1e-4)


def test_bad_prompts_say_what_is_wrong(predictor, tiny_model):
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict(point_coords=np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="point_labels must have shape"):
        predictor.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match="mask_input"):
        predictor.predict(mask_input=np.zeros((1, 64, 64)))
    with pytest.raises(RuntimeError, match="no image"):
        SAM2ImagePredictor(tiny_model).predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))


def test_official_checkpoints_load_without_their_video_keys(tiny_model, predictor, image, tmp_path):
    state = dict(tiny_model.state_dict())
    state["memory_attention.layers.0.linear1.weight"] = torch.zeros(3, 3)
    state["maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    path = tmp_path / "sam2.1_tiny_random.pt"
    torch.save({"model": state}, path)
    loaded = build_sam2(TINY_CONFIG, checkpoint=path)
    reloaded = SAM2ImagePredictor(loaded)
    reloaded.set_image(image)
    prompt = dict(point_coords=np.array([[45.0, 30.0]]), point_labels=np.array([1]), return_logits=True)
    assert np.array_equal(reloaded.predict(**prompt)[0], predictor.predict(**prompt)[0])

    state["sam_mask_decoder.conv_s0.bias"] = torch.zeros(5)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="conv_s0"):
        build_sam2(TINY_CONFIG, checkpoint=path)

    del state["sam_mask_decoder.conv_s0.bias"]
    state["sam_mask_decoder.unknown.weight"] = torch.zeros(1)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        build_sam2(TINY_CONFIG, checkpoint=path)


def test_model_types_and_configs():
    assert model_config("sam2_hiera_l")["trunk"]["stages"] == [2, 6, 36, 4]
    assert model_config(TINY_CONFIG)["neck"]["d_model"] == 256
    with pytest.raises(UnknownModelTypeError, match="sam2.1_hiera_t"):
        build_sam2("sam2.1_hiera_xl")


def test_preprocessing_stretches_to_a_square_in_imagenet_units():
    transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0)
    gray = np.full((30, 70, 3), 128, dtype=np.uint8)
    x = transforms(gray)
    assert tuple(x.shape) == (3, 1024, 1024)
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    # Coordinates scale per axis: the far corner of any image is the model frame's far corner.
    corner = transforms.transform_coords(torch.tensor([[70.0, 30.0]]), normalize=True, orig_hw=(30, 70))
    assert corner.tolist() == [[1024.0, 1024.0]]


@pytest.mark.parametrize("use_m2m", [False, True])
def test_everything_mode_runs_and_reports_each_mask(tiny_model, image, use_m2m):
    generator = SAM2AutomaticMaskGenerator(
        tiny_model,
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        output_mode="uncompressed_rle",
        use_m2m=use_m2m,
    )
    annotations = generator.generate(image)
    assert 0 < len(annotations) <= 12
    for annotation in annotations:
        assert set(annotation) == {
            "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"
        }  # fmt: skip
        assert annotation["segmentation"]["size"] == [60, 90]
        assert annotation["crop_box"] == [0, 0, 90, 60]
    ious = [a["predicted_iou"] for a in annotations]
    assert ious == sorted(ious, reverse=True)


def test_holes_and_sprinkles_up_to_the_limit_are_removed_before_upsampling():
    logits = torch.full((1, 1, 16, 16), -5.0)
    logits[..., 2:12, 2:12] = 5.0
    logits[..., 6, 6] = -5.0  # a one-pixel hole
    logits[..., 14, 14] = 5.0  # a one-pixel sprinkle
    transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0, max_hole_area=1, max_sprinkle_area=1)
    cleaned = transforms.postprocess_masks(logits, (16, 16)) > 0
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:12, 2:12] = True
    assert torch.equal(cleaned[0, 0], expected)
    # A limit below a region's area leaves it.
    kept = SAM2Transforms(1024, 0.0, max_hole_area=0.5, max_sprinkle_area=0.5).postprocess_masks(logits, (16, 16))
    assert bool(kept[0, 0, 14, 14] > 0) and bool(kept[0, 0, 6, 6] <= 0)
