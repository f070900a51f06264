"""Everything mode: parity with the reference generator, the generator's own invariants on a seeded model, and
constructed cases for NMS, crops and regions."""

import gzip
import json

import numpy as np
import pytest
import torch
from backend_fixtures import SMALL_PHOTO, model_embedding, photo
from backend_fixtures import reduced_sam as build_reduced_sam
from PIL import Image
from torch import nn

from backend.sam.amg import build_point_grid, coco_decode_rle, rle_to_mask
from backend.sam.automatic import SamAutomaticMaskGenerator, upscale_low_res_logits
from backend.sam.folded_decoder import decode_points_multimask
from backend.sam.sam import Sam

AMG_FIXTURE = "amg_reduced_vit_seed0_dog.json.gz"
# The reference fixture's parameters: a small grid, thresholds and offset set for random weights (tiny logits),
# and an NMS threshold of 1.0 that keeps every candidate.
AMG_PARAMS = {
    "points_per_side": 8,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.6,
    "stability_score_offset": 0.01,
    "box_nms_thresh": 1.0,
    "crop_n_layers": 0,
}


# --- the seeded reduced ViT on an 800x534 photo ----------------------------------------------------------


@pytest.fixture(scope="module")
def reduced_sam():
    return build_reduced_sam()


@pytest.fixture(scope="module")
def dog():
    """scikit-image's cat, enlarged to the reference dog's 800x534 (the name keeps the tests' wording)."""
    return photo(*SMALL_PHOTO)


@pytest.fixture(scope="module")
def dog_embedding(reduced_sam, dog):
    return torch.from_numpy(model_embedding(reduced_sam, dog))[None]


@pytest.fixture(scope="module")
def full_amg(reduced_sam, dog, dog_embedding):
    """Our own generator's full run with ``AMG_PARAMS`` (the parity test holds it equal to the reference's)."""
    generator = SamAutomaticMaskGenerator(reduced_sam, output_mode="uncompressed_rle", **AMG_PARAMS)
    return {"params": AMG_PARAMS, "annotations": generator.generate(dog, image_embedding=dog_embedding)}


@pytest.fixture(scope="module")
def reference_amg(reference_dir):
    with gzip.open(reference_dir / AMG_FIXTURE) as f:
        return json.load(f)


def _assert_same_annotations(annotations, expected):
    assert len(annotations) == len(expected)
    for i, (got, ref) in enumerate(zip(annotations, expected, strict=True)):
        assert np.allclose(got["point_coords"], ref["point_coords"]), i
        assert got["crop_box"] == ref["crop_box"], i
        assert got["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-3), i
        assert got["stability_score"] == pytest.approx(ref["stability_score"], abs=1e-3), i
        agreement = (rle_to_mask(got["segmentation"]) == rle_to_mask(ref["segmentation"])).mean()
        assert agreement >= 0.995, f"mask {i}: {agreement:.4f} of pixels agree"
        assert abs(got["area"] - ref["area"]) <= 0.005 * np.prod(ref["segmentation"]["size"]), i


def test_everything_matches_the_reference_mask_for_mask(reduced_sam, reference_dir, reference_amg):
    assert reference_amg["params"] == AMG_PARAMS
    dog = np.array(Image.open(reference_dir / "images" / "dog.jpg").convert("RGB"))
    dog_embedding = torch.from_numpy(np.load(reference_dir / "reduced_vit_seed0_dog.npz")["embedding"])
    generator = SamAutomaticMaskGenerator(reduced_sam, output_mode="uncompressed_rle", **reference_amg["params"])
    annotations = generator.generate(dog, image_embedding=dog_embedding)
    _assert_same_annotations(annotations, reference_amg["annotations"])
    # The fixture keeps every candidate: 3 per point unless filtered; the reference order is by predicted IoU.
    ious = [a["predicted_iou"] for a in annotations]
    assert ious == sorted(ious, reverse=True)
    assert generator.last_timings["encoder"] < 0.5  # the given embedding was used, no encoder run


def test_the_reduced_model_is_the_reference_checkpoint(reduced_sam, reference_dir):
    """The seeded model the other tests use is the very model the reference outputs were made with."""
    state = torch.load(reference_dir / "reduced_vit_seed0.pth", map_location="cpu", weights_only=True)
    ours = reduced_sam.state_dict()
    assert set(state) == set(ours) and all(torch.equal(ours[key], value) for key, value in state.items())


def test_shared_image_decoding_equals_the_mask_decoder(reduced_sam, dog_embedding):
    coords = torch.tensor([[[100.0, 200.0]], [[900.0, 30.0]], [[512.0, 600.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = reduced_sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        expected_masks, expected_iou = reduced_sam.mask_decoder(
            image_embeddings=dog_embedding,
            image_pe=reduced_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        masks, iou = decode_points_multimask(reduced_sam, dog_embedding, coords, labels)
    assert masks.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    torch.testing.assert_close(masks, expected_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, expected_iou, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "input_size, original_size",
    [((683, 1024), (534, 800)), ((1024, 683), (800, 534)), ((1024, 1024), (500, 500)), ((1021, 37), (5000, 181))],
)
def test_upscaling_only_the_read_low_res_rows_gives_the_same_logits(reduced_sam, input_size, original_size):
    low_res = torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(0))
    expected = reduced_sam.postprocess_masks(low_res[:, None], input_size, original_size)[:, 0]
    assert torch.equal(upscale_low_res_logits(reduced_sam, low_res, input_size, original_size), expected)


def test_an_iou_threshold_upscales_only_the_passing_masks_and_keeps_them_equal(
    reduced_sam, dog, dog_embedding, full_amg
):
    # The full run's NMS keeps everything (threshold 1.0), so a stricter IoU filter just drops its rows.
    # Random weights predict IoUs near 0, and a threshold only filters when it is above 0: take half the
    # smallest positive IoU.
    threshold = min(a["predicted_iou"] for a in full_amg["annotations"] if a["predicted_iou"] > 0) / 2
    expected = [a for a in full_amg["annotations"] if a["predicted_iou"] > threshold]
    assert 0 < len(expected) < len(full_amg["annotations"])
    params = {**full_amg["params"], "pred_iou_thresh": threshold}
    generator = SamAutomaticMaskGenerator(reduced_sam, output_mode="uncompressed_rle", **params)
    _assert_same_annotations(generator.generate(dog, image_embedding=dog_embedding), expected)


def _subset_params(run, indices):
    params = dict(run["params"])
    points_per_side = params.pop("points_per_side")
    grid = build_point_grid(points_per_side)[indices]
    return params, grid


def _run_subset(run, dog, grid):
    h, w = dog.shape[:2]
    wanted = {tuple(p) for p in (grid * [w, h]).tolist()}
    return [a for a in run["annotations"] if tuple(a["point_coords"][0]) in wanted]


def test_without_an_embedding_the_image_is_encoded_and_matches_the_full_run(reduced_sam, dog, full_amg):
    params, grid = _subset_params(full_amg, [0, 18, 37, 63])
    generator = SamAutomaticMaskGenerator(
        reduced_sam, points_per_side=None, point_grids=[grid], output_mode="uncompressed_rle", **params
    )
    annotations = generator.generate(dog)
    assert generator.last_timings["encoder"] > 0
    expected = _run_subset(full_amg, dog, grid)
    assert len(expected) >= 4
    _assert_same_annotations(annotations, expected)


def _greedy_box_nms(annotations, thresh):
    kept = []
    for ann in sorted(annotations, key=lambda a: -a["predicted_iou"]):
        x0, y0, w, h = ann["bbox"]
        suppressed = False
        for k in kept:
            kx0, ky0, kw, kh = k["bbox"]
            iw = max(0, min(x0 + w, kx0 + kw) - max(x0, kx0))
            ih = max(0, min(y0 + h, ky0 + kh) - max(y0, ky0))
            inter = iw * ih
            if inter / (w * h + kw * kh - inter) > thresh:
                suppressed = True
                break
        if not suppressed:
            kept.append(ann)
    return kept


def test_box_nms_keeps_exactly_the_non_duplicates_of_the_full_runs_candidates(
    reduced_sam, dog, dog_embedding, full_amg
):
    params, grid = _subset_params(full_amg, list(range(18, 30)))
    params["box_nms_thresh"] = 0.7
    generator = SamAutomaticMaskGenerator(
        reduced_sam, points_per_side=None, point_grids=[grid], output_mode="uncompressed_rle", **params
    )
    annotations = generator.generate(dog, image_embedding=dog_embedding)
    candidates = _run_subset(full_amg, dog, grid)
    expected = _greedy_box_nms(candidates, 0.7)
    assert len(expected) < len(candidates)  # the case really suppresses something
    _assert_same_annotations(annotations, expected)


# --- a stand-in model with predictable masks ------------------------------------------------------------------


class _ImageToEmbedding(nn.Module):
    """Stores the normalised red channel of the 1024x1024 input as the [1, 256, 64, 64] "embedding"."""

    img_size = 1024

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, 0].reshape(x.shape[0], 256, 64, 64)


class _PassPoints(nn.Module):
    """Hands the prompt points straight to the decoder."""

    embed_dim = 256
    image_embedding_size = (64, 64)
    mask_input_size = (256, 256)

    def forward(self, points, boxes, masks):
        return points[0], None

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1)


class _BrightPixels(nn.Module):
    """Every prompt segments the bright pixels (red > mid-grey) of the image: 3 copies, IoUs 0.9, 0.8, 0.7."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        red = image_embeddings.reshape(1, 1, 1024, 1024)
        low_res = nn.functional.avg_pool2d(red, 4) * 2.0
        batch = sparse_prompt_embeddings.shape[0]
        iou = torch.tensor([[0.9, 0.8, 0.7]]).expand(batch, 3)
        return low_res.expand(batch, 3, 256, 256), iou


class _SquaresAroundPoint(nn.Module):
    """Three squares centred on the prompt, half sides in the 256 frame, logits +-4; IoU preds as given."""

    def __init__(self, half_sides=(10.0, 11.0, 30.0), ious=(0.9, 0.95, 0.8)) -> None:
        super().__init__()
        self.half_sides = torch.tensor(half_sides)
        self.ious = torch.tensor([ious])

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        centres = sparse_prompt_embeddings[:, 0, :] / 4  # [B, 2] in the 256 frame
        grid = torch.arange(256, dtype=torch.float) + 0.5
        dx = (grid[None, :] - centres[:, 0:1]).abs()[:, None, None, :]  # [B, 1, 1, 256]
        dy = (grid[None, :] - centres[:, 1:2]).abs()[:, None, :, None]  # [B, 1, 256, 1]
        half = self.half_sides[None, :, None, None]
        inside = (dx <= half) & (dy <= half)
        logits = torch.where(inside, 4.0, -4.0)
        return logits, self.ious.expand(centres.shape[0], 3)


def _stand_in_sam(decoder: nn.Module) -> Sam:
    return Sam(image_encoder=_ImageToEmbedding(), prompt_encoder=_PassPoints(), mask_decoder=decoder).eval()


def _image(h: int, w: int, white_boxes) -> np.ndarray:
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in white_boxes:
        image[y0:y1, x0:x1] = 255
    return image


def _one_point(x: float, y: float):
    return [np.array([[x, y]])]


def test_every_output_mode_describes_the_same_mask():
    sam = _stand_in_sam(_SquaresAroundPoint())
    image = _image(200, 300, [])
    results = {}
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=None,
            point_grids=_one_point(0.5, 0.5),
            pred_iou_thresh=0.0,
            stability_score_thresh=0.5,
            box_nms_thresh=1.0,
            output_mode=mode,
        )
        results[mode] = generator.generate(image)
    binary = [a["segmentation"] for a in results["binary_mask"]]
    assert len(binary) == 3 and all(m.shape == (200, 300) and m.dtype == bool for m in binary)
    for i, mask in enumerate(binary):
        np.testing.assert_array_equal(rle_to_mask(results["uncompressed_rle"][i]["segmentation"]), mask)
        coco = results["coco_rle"][i]["segmentation"]
        assert isinstance(coco["counts"], str) and coco["size"] == [200, 300]
        np.testing.assert_array_equal(rle_to_mask(coco_decode_rle(coco)), mask)
        ann = results["binary_mask"][i]
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert ann["point_coords"] == [[150.0, 100.0]]
        assert ann["crop_box"] == [0, 0, 300, 200]
        # A square centred on the prompt: half side 11 in the 256 frame is 11 * 300/256 = 12.9 pixels.
        assert abs((xs.min() + xs.max()) / 2 - 150) <= 1.5 and abs((ys.min() + ys.max()) / 2 - 100) <= 1.5
    assert [a["predicted_iou"] for a in results["binary_mask"]] == pytest.approx([0.95, 0.9, 0.8])
    widths = [a["bbox"][2] for a in results["binary_mask"]]
    assert abs(widths[0] - 2 * 11 * 300 / 256) <= 3 and widths[2] > 2 * widths[1]


def test_box_nms_removes_the_lower_scored_of_two_near_identical_masks():
    sam = _stand_in_sam(_SquaresAroundPoint(half_sides=(10.0, 11.0, 30.0), ious=(0.9, 0.95, 0.8)))
    image = _image(200, 300, [])

    def run(**kwargs):
        params = dict(pred_iou_thresh=0.0, stability_score_thresh=0.5, output_mode="uncompressed_rle")
        params.update(kwargs)
        generator = SamAutomaticMaskGenerator(sam, points_per_side=None, point_grids=_one_point(0.5, 0.5), **params)
        return [round(a["predicted_iou"], 2) for a in generator.generate(image)]

    # Squares of half side 10 and 11 overlap with IoU ~(21/23)^2 = 0.83.
    assert run(box_nms_thresh=0.7) == [0.95, 0.8]
    assert run(box_nms_thresh=0.9) == [0.95, 0.9, 0.8]
    assert run(box_nms_thresh=0.7, pred_iou_thresh=0.85) == [0.95]
    assert run(stability_score_thresh=1.01) == []


def _one_point_per_tile(sam) -> SamAutomaticMaskGenerator:
    """One crop layer (the image and 4 tiles), one grid point per crop, every mask kept."""
    return SamAutomaticMaskGenerator(
        sam,
        points_per_side=1,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.5,
        output_mode="binary_mask",
    )


def test_crop_duplicates_keep_the_smaller_crop_and_encoder_runs_once_per_crop():
    decoder = _BrightPixels()
    sam = _stand_in_sam(decoder)
    image = _image(400, 600, [(60, 60, 120, 120)])
    generator = _one_point_per_tile(sam)
    annotations = generator.generate(image)
    # Crops for 400x600: overlap int(512/1500*400) = 136, tiles 368x268 at x 0/232, y 0/132.
    assert sam.image_encoder.calls == 5
    assert len(annotations) == 1
    (ann,) = annotations
    assert ann["crop_box"] == [0, 0, 368, 268]
    assert ann["bbox"] == pytest.approx([60, 60, 59, 59], abs=2)
    assert ann["point_coords"] == [[184.0, 134.0]]  # the tile's single grid point, in image coordinates

    # The full-image crop reuses a given embedding: only the 4 tiles are encoded.
    sam.image_encoder.calls = 0
    embedding = sam.image_encoder(
        sam.preprocess(torch.as_tensor(generator.predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float())
    )
    sam.image_encoder.calls = 0
    again = generator.generate(image, image_embedding=embedding)
    assert sam.image_encoder.calls == 4
    np.testing.assert_array_equal(again[0]["segmentation"], ann["segmentation"])


def test_masks_cut_by_an_inner_crop_edge_are_dropped():
    sam = _stand_in_sam(_BrightPixels())
    image = _image(400, 600, [(330, 60, 390, 120)])  # cut by tile [0, 0, 368, 268]'s right edge
    generator = _one_point_per_tile(sam)
    annotations = generator.generate(image)
    assert len(annotations) == 1
    (ann,) = annotations
    assert ann["crop_box"] == [232, 0, 368, 268]  # the tile that holds the whole square
    assert ann["bbox"] == pytest.approx([330, 60, 59, 59], abs=2)
    assert ann["area"] == pytest.approx(60 * 60, rel=0.1)


def test_min_mask_region_area_fills_small_holes_and_drops_small_islands():
    image = _image(200, 300, [(100, 50, 180, 130), (20, 20, 28, 28)])
    image[86:94, 136:144] = 0  # an 8x8 hole in the big square; the 8x8 square at (20, 20) is an island
    sam = _stand_in_sam(_BrightPixels())

    def run(min_area):
        generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=1,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.5,
            min_mask_region_area=min_area,
            output_mode="binary_mask",
        )
        return generator.generate(image)

    (raw,) = run(0)
    assert not raw["segmentation"][90, 140] and raw["segmentation"][24, 24]
    (clean,) = run(100)
    mask = clean["segmentation"]
    assert mask[90, 140] and not mask[24, 24]
    assert mask[50:130, 100:180].mean() > 0.97 and mask.sum() == clean["area"]
    assert clean["bbox"] == pytest.approx([100, 50, 79, 79], abs=2)


def test_progress_reports_each_batch_up_to_one():
    sam = _stand_in_sam(_SquaresAroundPoint())
    seen = []
    generator = SamAutomaticMaskGenerator(sam, points_per_side=4, points_per_batch=5, stability_score_thresh=0.5)
    generator.generate(_image(100, 100, []), progress=seen.append)
    assert seen == pytest.approx([1 / 4, 2 / 4, 3 / 4, 1.0])  # 16 points in batches of 5


def test_bad_arguments_get_plain_errors():
    sam = _stand_in_sam(_SquaresAroundPoint())
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(sam, output_mode="png")
    with pytest.raises(ValueError, match="exactly one of points_per_side or point_grids"):
        SamAutomaticMaskGenerator(sam, points_per_side=None)
    with pytest.raises(ValueError, match="one grid per crop layer"):
        SamAutomaticMaskGenerator(sam, points_per_side=None, point_grids=_one_point(0.5, 0.5), crop_n_layers=1)
    generator = SamAutomaticMaskGenerator(sam, points_per_side=2)
    with pytest.raises(ValueError, match="HxWx3"):
        generator.generate(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(np.zeros((10, 10, 3), dtype=np.float32))


# --- streaming: the masks shown while the grid is decoded ---------------------------------------------------------


def _apply_updates(updates):
    """The set a client shows after each update: {id: annotation}; returns the list of those sets."""
    shown, states = {}, []
    for added, removed in updates:
        for mask_id in removed:
            assert mask_id in shown, f"retracted {mask_id}, which was never shown"
            del shown[mask_id]
        for mask_id, annotation in added:
            assert mask_id not in shown, f"{mask_id} added twice"
            shown[mask_id] = annotation
        states.append(dict(shown))
    return states


def _canonical(annotations):
    return sorted(json.dumps(a, sort_keys=True) for a in annotations)


def test_streamed_masks_after_retractions_are_exactly_the_result(reduced_sam, dog, dog_embedding, full_amg):
    params = {**AMG_PARAMS, "points_per_batch": 16}
    generator = SamAutomaticMaskGenerator(reduced_sam, output_mode="coco_rle", **params)
    updates, progress = [], []
    annotations = generator.generate(
        dog,
        image_embedding=dog_embedding,
        progress=progress.append,
        on_update=lambda added, removed: updates.append((added, removed)),
    )
    states = _apply_updates(updates)
    assert _canonical(states[-1].values()) == _canonical(annotations)
    # Masks arrived batch by batch: 64 points in batches of 4, 8, 16, 16, 16 and 4 (NMS keeps every candidate).
    assert len(progress) == len(updates) == 6
    sizes = [len(state) for state in states]
    assert 0 < sizes[0] <= 12 and sizes == sorted(set(sizes)) and sizes[-1] == len(annotations)
    # The first batch's points are spread over the image, not the top row.
    first_points = [a["point_coords"][0] for _, a in updates[0][0]]
    assert len({y for _, y in first_points}) >= 2 and len({x for x, _ in first_points}) >= 2
    # Streaming changes the order points are decoded in, not the result.
    plain = SamAutomaticMaskGenerator(reduced_sam, output_mode="coco_rle", **params).generate(
        dog, image_embedding=dog_embedding
    )
    assert len(plain) == len(annotations)
    for got, want in zip(annotations, plain, strict=True):
        assert got["point_coords"] == want["point_coords"]
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-5)
        got_mask = rle_to_mask(coco_decode_rle(got["segmentation"]))
        assert (got_mask == rle_to_mask(coco_decode_rle(want["segmentation"]))).mean() >= 0.9999


def test_streaming_retracts_masks_that_a_later_batch_suppresses_and_keeps_grid_order_ties():
    # Every point gets the same three squares and scores, so NMS breaks every tie by grid order: a square
    # shown early is retracted when its neighbour earlier in the grid arrives in a later batch.
    sam = _stand_in_sam(_SquaresAroundPoint(half_sides=(10.0, 11.0, 120.0), ious=(0.9, 0.95, 0.8)))
    image = _image(200, 300, [])
    params = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.5)
    updates = []
    streamed = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **params).generate(
        image, on_update=lambda added, removed: updates.append((added, removed))
    )
    plain = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **params).generate(image)
    assert streamed == plain
    states = _apply_updates(updates)
    assert sum(len(removed) for _, removed in updates) >= 2
    assert _canonical(states[-1].values()) == _canonical(plain)


def test_streaming_retracts_what_the_cross_crop_nms_removes():
    sam = _stand_in_sam(_BrightPixels())
    image = _image(400, 600, [(60, 60, 120, 120)])
    updates = []
    generator = _one_point_per_tile(sam)
    annotations = generator.generate(image, on_update=lambda added, removed: updates.append((added, removed)))
    states = _apply_updates(updates)
    # The full-image crop and the tile holding the square both found it; the tile's copy is the result.
    assert max(len(state) for state in states) >= 2
    assert updates[-1][1]  # the last update retracts the duplicates
    (final,) = states[-1].values()
    (want,) = annotations
    np.testing.assert_array_equal(final["segmentation"], want["segmentation"])
    assert final["crop_box"] == want["crop_box"] == [0, 0, 368, 268]
