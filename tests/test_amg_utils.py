"""Mask utilities of everything mode on hand-built cases: RLE, COCO strings, boxes, NMS, crops, regions."""

import numpy as np
import pytest
import torch

from backend.sam import amg

# --- run-length encodings -----------------------------------------------------------------------------------


def _random_masks(seed: int, b: int, h: int, w: int, density: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, generator=gen) < density


@pytest.mark.parametrize("shape", [(5, 7, 9), (3, 1, 1), (2, 1, 13), (4, 31, 2)])
def test_rle_round_trip_gives_back_every_pixel(shape):
    masks = _random_masks(0, *shape, density=0.5)
    masks[0] = False
    masks[-1] = True
    rles = amg.mask_to_rle_pytorch(masks)
    assert len(rles) == shape[0]
    for mask, rle in zip(masks, rles, strict=True):
        assert rle["size"] == list(shape[1:])
        assert sum(rle["counts"]) == shape[1] * shape[2]
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask.numpy())
        assert amg.area_from_rle(rle) == int(mask.sum())


def test_rle_of_no_masks_is_an_empty_list():
    assert amg.mask_to_rle_pytorch(torch.zeros(0, 4, 5, dtype=torch.bool)) == []


def test_rle_is_column_major_and_starts_with_background():
    mask = torch.tensor([[[1, 0, 0], [1, 1, 0]]], dtype=torch.bool)  # columns: [1,1] [0,1] [0,0]
    (rle,) = amg.mask_to_rle_pytorch(mask)
    assert rle == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}
    (rle,) = amg.mask_to_rle_pytorch(~mask)
    assert rle == {"size": [2, 3], "counts": [2, 1, 1, 2]}


def test_rle_to_mask_rejects_counts_of_the_wrong_total():
    with pytest.raises(ValueError, match="expected 2\\*3=6"):
        amg.rle_to_mask({"size": [2, 3], "counts": [1, 2]})


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([5], "5"),
        ([100], "T3"),  # 100 = 4 + 3*32: low group with continuation bit (4|0x20)+48='T', then '3'
        ([0, 4], "04"),
        ([1, 2, 3, 1], "123O"),  # the 4th count is stored as 1-2 = -1: group 31 with sign bit -> 'O'
        ([2, 3, 2, 5], "2322"),  # 5-3 = 2
    ],
)
def test_coco_string_encoding_matches_hand_computed_strings(counts, expected):
    assert amg.encode_coco_counts(counts) == expected
    assert amg.decode_coco_counts(expected) == counts


def test_coco_string_round_trip_on_random_and_large_counts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(0, 3000, size=int(rng.integers(1, 60))).tolist()
        s = amg.encode_coco_counts(counts)
        assert s.isascii() and s.isprintable()
        assert amg.decode_coco_counts(s) == counts
    huge = [0, 2**40, 1, 2**35, 7, 0, 2**33]
    assert amg.decode_coco_counts(amg.encode_coco_counts(huge)) == huge


def test_coco_rle_round_trip_through_masks():
    masks = _random_masks(1, 3, 40, 30, density=0.2)
    for mask, rle in zip(masks, amg.mask_to_rle_pytorch(masks), strict=True):
        coco = amg.coco_encode_rle(rle)
        assert coco["size"] == [40, 30] and isinstance(coco["counts"], str)
        np.testing.assert_array_equal(amg.rle_to_mask(amg.coco_decode_rle(coco)), mask.numpy())


@pytest.mark.parametrize("bad", ["12\x01", "1p", "1T"])
def test_coco_string_decoding_rejects_garbage(bad):
    with pytest.raises(ValueError):
        amg.decode_coco_counts(bad)


# --- boxes, scores --------------------------------------------------------------------------------------


def test_mask_to_box_is_tight_with_inclusive_max_and_zero_when_empty():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 2:5, 1:4] = True
    masks[1, 5, 7] = True
    boxes = amg.batched_mask_to_box(masks)
    assert boxes.tolist() == [[1, 2, 3, 4], [7, 5, 7, 5], [0, 0, 0, 0]]
    assert amg.batched_mask_to_box(masks.reshape(1, 3, 6, 8)).shape == (1, 3, 4)


def test_cpu_fast_paths_agree_with_the_torch_paths_used_on_gpus():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 40, 50, generator=gen)
    logits[0, 1] = -5.0  # empty at every threshold: NaN in both paths
    torch.testing.assert_close(
        amg._stability_score_numpy(logits, 0.3, -0.3), amg._stability_score_torch(logits, 0.3, -0.3), equal_nan=True
    )
    masks = amg.threshold_masks(logits, 0.5)
    assert torch.equal(masks, logits > 0.5)
    flat = masks.flatten(0, 1)
    assert torch.equal(amg._mask_to_box_numpy(flat), amg._mask_to_box_torch(flat))
    assert amg._mask_to_box_numpy(flat)[1].tolist() == [0, 0, 0, 0]


def test_stability_score_is_iou_of_the_offset_thresholds():
    logits = torch.full((1, 4, 5), -5.0)
    logits[0, :2, :] = 2.0  # 10 pixels above +1
    logits[0, 2, :] = 0.5  # 5 pixels only above -1
    score = amg.calculate_stability_score(logits, mask_threshold=0.0, threshold_offset=1.0)
    assert score.tolist() == [pytest.approx(10 / 15)]
    empty = amg.calculate_stability_score(torch.full((1, 2, 2), -9.0), 0.0, 1.0)
    assert torch.isnan(empty).all()  # fails every threshold, as the reference


# --- NMS ---------------------------------------------------------------------------------------------------


def _greedy_nms_reference(boxes, scores, thresh):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0, x1 - x0) * max(0, y1 - y0)
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            if inter / (area_i + area_j - inter) > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_suppresses_overlaps_above_threshold_and_orders_by_score():
    boxes = torch.tensor([[50, 50, 60, 60], [0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.float)
    scores = torch.tensor([0.7, 0.9, 0.8])
    # IoU([0,0,10,10], [1,1,11,11]) = 81 / 119 = 0.68
    assert amg.nms(boxes, scores, 0.5).tolist() == [1, 0]
    assert amg.nms(boxes, scores, 0.7).tolist() == [1, 2, 0]


def test_nms_keeps_iou_exactly_at_threshold_and_breaks_ties_by_index():
    boxes = torch.tensor([[0, 0, 3, 1], [1, 0, 4, 1]], dtype=torch.float)  # IoU exactly 2/4
    scores = torch.tensor([0.5, 0.5])
    assert amg.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert amg.nms(boxes, scores, 0.49).tolist() == [0]
    assert amg.nms(boxes.flip(0), scores, 0.49).tolist() == [0]


def test_nms_is_greedy_a_suppressed_box_suppresses_nothing():
    boxes = torch.tensor([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], dtype=torch.float)
    # A~B 0.54, B~C 0.54, A~C 0.25: A removes B, so C survives
    assert amg.nms(boxes, torch.tensor([3.0, 2.0, 1.0]), 0.5).tolist() == [0, 2]


def test_nms_matches_a_plain_greedy_reference_on_random_boxes():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        xy = rng.integers(0, 50, size=(n, 2))
        wh = rng.integers(1, 30, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.integers(0, 5, size=n).astype(np.float32) / 5  # many ties
        thresh = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
        got = amg.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
        assert got == _greedy_nms_reference(boxes.tolist(), scores.tolist(), thresh)


def test_batched_nms_never_suppresses_across_categories():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 10, 10]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    idxs = torch.tensor([0, 1, 0, 1])
    assert amg.batched_nms(boxes, scores, idxs, 0.5).tolist() == [3, 0]
    assert amg.batched_nms(boxes, scores, torch.tensor([0, 1, 2, 3]), 0.5).tolist() == [3, 0, 1, 2]
    assert amg.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).tolist() == []


# --- grids and crops -------------------------------------------------------------------------------------


def test_point_grid_is_cell_centres_row_by_row():
    np.testing.assert_allclose(amg.build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    grids = amg.build_all_layer_point_grids(8, 2, 2)
    assert [len(g) for g in grids] == [64, 16, 4]


def test_crop_boxes_overlap_and_cover_the_image():
    boxes, layers = amg.generate_crop_boxes((534, 800), 1, 512 / 1500)
    # overlap = int(512/1500 * 534) = 182; crop 491 x 358
    assert boxes == [[0, 0, 800, 534], [0, 0, 491, 358], [0, 176, 491, 534], [309, 0, 800, 358], [309, 176, 800, 534]]
    assert layers == [0, 1, 1, 1, 1]
    boxes, layers = amg.generate_crop_boxes((100, 300), 2, 0.25)
    assert layers.count(2) == 16
    covered = np.zeros((100, 300), dtype=int)
    for x0, y0, x1, y1 in boxes[5:]:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_uncrop_puts_crop_results_back_in_image_coordinates():
    crop = [2, 1, 5, 3]
    masks = torch.ones(1, 2, 3, dtype=torch.bool)
    full = amg.uncrop_masks(masks, crop, orig_h=4, orig_w=6)
    assert full.shape == (1, 4, 6) and full.sum() == 6 and full[0, 1:3, 2:5].all()
    assert amg.uncrop_boxes_xyxy(torch.tensor([[0, 0, 2, 1]]), crop).tolist() == [[2, 1, 4, 2]]
    assert amg.uncrop_points(torch.tensor([[0.5, 1.0]]), crop).tolist() == [[2.5, 2.0]]


def test_box_near_crop_edge_ignores_edges_shared_with_the_image():
    crop = [0, 0, 100, 100]
    image = [0, 0, 200, 100]
    boxes = torch.tensor([[0, 0, 50, 100], [10, 10, 90, 50], [40, 40, 60, 60]])
    # box 0 touches image edges only; box 1 is within 20 px of the crop's right edge (x=100)
    assert amg.is_box_near_crop_edge(boxes, crop, image).tolist() == [False, True, False]


# --- small regions ------------------------------------------------------------------------------------------


def test_small_holes_are_filled_and_large_ones_kept():
    mask = np.ones((10, 10), dtype=bool)
    mask[2, 2] = False  # 1-pixel hole
    mask[5:8, 5:8] = False  # 9-pixel hole
    filled, changed = amg.remove_small_regions(mask, 4, "holes")
    assert changed
    expected = mask.copy()
    expected[2, 2] = True
    np.testing.assert_array_equal(filled, expected)
    same, changed = amg.remove_small_regions(mask, 1, "holes")
    assert not changed and (same == mask).all()


def test_small_islands_are_removed_with_eight_connectivity():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:4, 0:4] = True  # 16 px
    mask[7, 7] = mask[8, 8] = True  # diagonal pair: one 2-px island under 8-connectivity
    mask[9, 0] = True  # 1 px
    out, changed = amg.remove_small_regions(mask, 2, "islands")
    assert changed
    expected = mask.copy()
    expected[9, 0] = False
    np.testing.assert_array_equal(out, expected)
    out, _ = amg.remove_small_regions(mask, 3, "islands")
    assert out.sum() == 16


def test_when_every_island_is_small_the_largest_survives():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0:3] = True
    mask[5, 5] = True
    out, changed = amg.remove_small_regions(mask, 100, "islands")
    assert changed and out.sum() == 3 and out[0, 0:3].all()
    with pytest.raises(ValueError, match="mode"):
        amg.remove_small_regions(mask, 1, "specks")


# --- MaskData ------------------------------------------------------------------------------------------------


def test_mask_data_filters_and_concatenates_every_column_together():
    data = amg.MaskData(a=torch.arange(4), b=np.arange(4) * 10, c=["w", "x", "y", "z"])
    data.filter(torch.tensor([True, False, True, True]))
    data.cat(amg.MaskData(a=torch.tensor([9]), b=np.array([90]), c=["q"]))
    data.filter(torch.tensor([3, 0]))
    assert data["a"].tolist() == [9, 0] and data["b"].tolist() == [90, 0] and data["c"] == ["q", "w"]
    with pytest.raises(TypeError):
        amg.MaskData(a=3)
