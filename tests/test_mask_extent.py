"""Boxes of full-resolution masks found from low-res logits (backend/sam/mask_extent.py), and everything mode
with the stability filter open, which uses them instead of upsampling every candidate."""

import json

import pytest
import torch
from backend_fixtures import SMALL_PHOTO, model_embedding, photo
from backend_fixtures import reduced_sam as build_reduced_sam

from backend.sam.amg import batched_mask_to_box
from backend.sam.automatic import SamAutomaticMaskGenerator, upscale_low_res_logits
from backend.sam.folded_decoder import decode_point_tokens
from backend.sam.mask_extent import MaskExtent


class _Frame:
    """What upscale_low_res_logits reads of a model: the encoder frame's side and nothing else."""

    image_size = 1024

    @staticmethod
    def postprocess_masks(masks, input_size, original_size):  # only for non-integer scales, unused here
        raise AssertionError("not reached: 256 -> 1024 is an integer scale")


def _low_res_cases(generator: torch.Generator) -> torch.Tensor:
    """[N, 256, 256] logits of the kinds everything mode meets: speckle (random weights), smooth blobs of
    every size (real objects), blobs at the image's edges, all negative, all positive, thin lines."""
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    cases = [torch.randn(256, 256, generator=generator) * 4 + shift for shift in (-6.0, -2.0, 0.0, 3.0)]
    for _ in range(24):
        cy, cx = torch.rand(2, generator=generator) * 300 - 20
        radius = float(torch.rand(1, generator=generator)) * 60 + 0.3
        blob = radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        cases.append(blob + torch.randn(256, 256, generator=generator) * 0.3)
    cases.append(torch.full((256, 256), -5.0))
    cases.append(torch.full((256, 256), 5.0))
    line = torch.full((256, 256), -3.0)
    line[100, 37:40] = 4.0
    cases.append(line)
    return torch.stack(cases)


@pytest.mark.parametrize(
    "input_size, original_size",
    [
        ((683, 1024), (1200, 1800)),
        ((1024, 768), (1024, 768)),
        ((683, 1024), (534, 800)),
        ((1024, 1024), (333, 333)),
        ((576, 1024), (1080, 1920)),
    ],
)
def test_boxes_equal_the_upsampled_masks_boxes(input_size, original_size):
    low_res = _low_res_cases(torch.Generator().manual_seed(sum(original_size)))
    expected = batched_mask_to_box(upscale_low_res_logits(_Frame, low_res, input_size, original_size) > 0).long()
    boxes, exact = MaskExtent((256, 256), 1024, input_size, original_size).boxes(low_res, 0.0)
    assert exact.float().mean() >= 0.9  # almost every mask is decided from its low-res logits
    assert torch.equal(boxes[exact], expected[exact])
    # The cases cover empty, full and partial masks.
    areas = (expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1])
    assert (areas == 0).any() and (areas == (original_size[0] - 1) * (original_size[1] - 1)).any()


def test_a_logit_at_the_threshold_is_left_to_the_exact_path():
    low_res = torch.full((1, 256, 256), -3.0)
    # One low-res pixel a little above 0, just enough that its brightest full-resolution pixels (weight
    # 0.875 * 0.875 on it, the rest on its -3 neighbours) come out at 0 give or take rounding.
    low_res[0, 40, 40] = 3.0 * (1 - 0.875**2) / 0.875**2
    _, exact = MaskExtent((256, 256), 1024, (1024, 1024), (1024, 1024)).boxes(low_res, 0.0)
    assert not bool(exact[0])


@pytest.fixture(scope="module")
def reduced_sam():
    return build_reduced_sam()


class _EveryMaskUpsampled(SamAutomaticMaskGenerator):
    """The generator as it was before boxes came from low-res logits: every candidate upsampled."""

    def _filter_by_box(self, low_res, crop_box, orig_size):
        return self._filter_by_stability(low_res, crop_box, orig_size)  # an open filter keeps every mask


@pytest.mark.parametrize("stream", [False, True])
def test_open_filters_give_the_result_of_upsampling_every_mask(reduced_sam, stream):
    image = photo(*SMALL_PHOTO)
    embedding = torch.from_numpy(model_embedding(reduced_sam, image))[None]
    params = dict(
        points_per_side=8,
        points_per_batch=16,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        stability_score_offset=0.01,
        box_nms_thresh=1.0,  # random weights' masks overlap: keep them all, so every box is compared
        output_mode="coco_rle",
    )
    updates = []
    on_update = (lambda added, removed: updates.append((added, removed))) if stream else None
    fast = SamAutomaticMaskGenerator(reduced_sam, **params)
    got = fast.generate(image, image_embedding=embedding, on_update=on_update)
    # Streamed the same way: a stream decodes in other batches, and on some CPUs (AMX) torch's kernels round a
    # batch's products differently by its size (1e-7 in the scores, a pixel at a mask's edge).
    streamed = (lambda added, removed: None) if stream else None
    want = _EveryMaskUpsampled(reduced_sam, **params).generate(image, image_embedding=embedding, on_update=streamed)
    assert len(want) > 3
    assert [json.dumps(a, sort_keys=True) for a in got] == [json.dumps(a, sort_keys=True) for a in want]
    assert all(a["stability_score"] == a["stability_score"] for a in got)  # filled in: no NaN
    if stream:
        shown = {}
        for added, removed in updates:
            for mask_id in removed:
                del shown[mask_id]
            shown.update(added)
        assert sorted(json.dumps(a, sort_keys=True) for a in shown.values()) == sorted(
            json.dumps(a, sort_keys=True) for a in got
        )


def test_upscaling_only_the_tokens_under_the_image_gives_the_same_logits(reduced_sam):
    image = photo(*SMALL_PHOTO)
    embedding = torch.from_numpy(model_embedding(reduced_sam, image))[None]
    points = torch.rand(8, 1, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1024.0, 683.0])
    labels = torch.ones(8, 1, dtype=torch.int)
    pairs = torch.arange(8).repeat_interleave(3), torch.arange(3).repeat(8)
    full = decode_point_tokens(reduced_sam, embedding, points, labels).masks(*pairs)
    part = decode_point_tokens(reduced_sam, embedding, points, labels, extent=(43, 60)).masks(*pairs)
    assert torch.equal(part[:, :172, :240], full[:, :172, :240])
    assert part[:, 172:].isnan().all() and part[:, :, 240:].isnan().all()
