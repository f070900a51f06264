"""Mask utilities for automatic mask generation ("everything" mode).

Point grids, crop boxes, stability scores, mask boxes, box NMS, run-length encodings (uncompressed and
COCO's compressed strings) and small-region removal. Everything is vectorised with numpy / torch so that
no loop runs per pixel; the semantics follow segment-anything's ``utils/amg.py`` and the parts of
torchvision / pycocotools / OpenCV it relies on, none of which are needed here.
"""

import math
from collections.abc import Generator, ItemsView, Sequence
from copy import deepcopy
from itertools import product
from typing import Any

import numpy as np
import torch


class MaskData:
    """A dict of per-mask columns (tensors, arrays or lists) that are filtered and concatenated together."""

    def __init__(self, **kwargs) -> None:
        for value in kwargs.values():
            _check_column(value)
        self._stats = dict(**kwargs)

    def __setitem__(self, key: str, item: Any) -> None:
        _check_column(item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def items(self) -> ItemsView[str, Any]:
        return self._stats.items()

    def __len__(self) -> int:
        for value in self._stats.values():
            return len(value)
        return 0

    def filter(self, keep: torch.Tensor) -> None:
        """Keeps the rows selected by ``keep`` (a bool mask or an index tensor), in its order."""
        keep = torch.as_tensor(keep)
        if keep.dtype == torch.bool:
            index = torch.nonzero(keep, as_tuple=False).flatten()
        else:
            index = keep.long().flatten()
        index_np = index.cpu().numpy()
        for key, value in self._stats.items():
            if value is None:
                self._stats[key] = None
            elif isinstance(value, torch.Tensor):
                self._stats[key] = value[index.to(value.device)]
            elif isinstance(value, np.ndarray):
                self._stats[key] = value[index_np]
            else:
                self._stats[key] = [value[i] for i in index_np.tolist()]

    def cat(self, new_stats: "MaskData") -> None:
        """Appends the rows of ``new_stats``, which must not be modified afterwards (rows are shared, not copied:
        copying every RLE would cost more than the rest of the post-processing)."""
        for key, value in new_stats.items():
            if key not in self._stats or self._stats[key] is None:
                self._stats[key] = list(value) if isinstance(value, list) else value
            elif isinstance(value, torch.Tensor):
                self._stats[key] = torch.cat([self._stats[key], value], dim=0)
            elif isinstance(value, np.ndarray):
                self._stats[key] = np.concatenate([self._stats[key], value], axis=0)
            else:
                self._stats[key] = self._stats[key] + list(value)

    def to_numpy(self) -> None:
        for key, value in self._stats.items():
            if isinstance(value, torch.Tensor):
                self._stats[key] = value.detach().cpu().numpy()


def _check_column(value: Any) -> None:
    if value is not None and not isinstance(value, (list, np.ndarray, torch.Tensor)):
        raise TypeError(f"MaskData columns must be lists, numpy arrays or tensors, not {type(value).__name__}")


def batch_iterator(batch_size: int, *args) -> Generator[list[Any], None, None]:
    """Yields aligned slices of at most ``batch_size`` rows from each argument."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("batch_iterator needs one or more inputs of the same length")
    n_batches = len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)
    for b in range(n_batches):
        yield [arg[b * batch_size : (b + 1) * batch_size] for arg in args]


# --- point grids and crops -------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Evenly spaced points at cell centres of an n x n grid over [0, 1]^2, as [n*n, 2] (x, y), row by row."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One point grid per crop layer; layer i has n_per_side / scale_per_layer**i points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def coverage_order(points: np.ndarray) -> np.ndarray:
    """An order of grid points [N, 2] in which every prefix is spread over the whole grid.

    Each axis's distinct coordinates are ranked in bit-reversed order (0, 1/2, 1/4, 3/4, ... of the axis), and
    points are taken by the larger of their two ranks: the first k x k points form a coarse k x k grid over the
    image, the next ones refine it. Ties keep grid order.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    ranks = []
    for axis in range(2):
        values, position = np.unique(points[:, axis], return_inverse=True)
        bits = max(1, int(len(values) - 1).bit_length())
        reversed_bits = np.array([int(f"{i:0{bits}b}"[::-1], 2) for i in range(len(values))])
        rank_of_value = np.argsort(np.argsort(reversed_bits, kind="stable"), kind="stable")
        ranks.append(rank_of_value[position.reshape(-1)])
    level = np.maximum(ranks[0], ranks[1])
    return np.lexsort((np.arange(len(points)), ranks[0], ranks[1], level))


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY) for the whole image (layer 0) and for 2^i x 2^i overlapping tiles in layer i."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs: list[int] = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        # Column-major tile order (x outer), as the reference.
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Boxes [..., 4] in crop coordinates -> image coordinates."""
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if boxes.dim() == 3:
        offset = offset.unsqueeze(1)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Points [..., 2] in crop coordinates -> image coordinates."""
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0]], device=points.device)
    if points.dim() == 3:
        offset = offset.unsqueeze(1)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks [..., h, w] of a crop -> [..., orig_h, orig_w], zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """[N] bool: the box (crop coordinates) touches a crop edge that is not also an image edge."""
    crop_box_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_box_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop_box_t[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig_box_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


# --- scores and boxes ------------------------------------------------------------------------------------


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at mask_threshold +/- offset: logits [..., H, W] -> scores [...].

    The high-threshold mask is a subset of the low-threshold one, so IoU is a ratio of two counts.
    An all-empty mask gives NaN, which fails every threshold, as in the reference. Traced for ONNX export
    (model_export's official graph), it takes the torch path, the only one that becomes graph operations.
    """
    high, low = mask_threshold + threshold_offset, mask_threshold - threshold_offset
    if masks.device.type == "cpu" and masks.dim() >= 2 and not torch.jit.is_tracing():
        return _stability_score_numpy(masks, high, low)
    return _stability_score_torch(masks, high, low)


def _stability_score_torch(masks: torch.Tensor, high: float, low: float) -> torch.Tensor:
    # int16 row sums then int32 totals, as the reference, to keep memory low on big batches.
    intersections = (masks > high).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (masks > low).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def _stability_score_numpy(masks: torch.Tensor, high: float, low: float) -> torch.Tensor:
    # On the CPU numpy's compare + count_nonzero per mask is several times faster than torch's reductions for
    # these memory-bound passes over full-resolution logits; the counts are the same.
    planes = masks.detach().numpy().reshape(-1, *masks.shape[-2:])
    intersections = torch.tensor([np.count_nonzero(p > high) for p in planes], dtype=torch.int32)
    unions = torch.tensor([np.count_nonzero(p > low) for p in planes], dtype=torch.int32)
    return (intersections / unions).reshape(masks.shape[:-2])


def threshold_masks(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """logits [..., H, W] -> bool masks (logits > threshold), on the logits' device."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.detach().numpy() > threshold)  # faster than torch's compare here
    return logits > threshold


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive max pixel index) of bool masks [..., H, W] -> [..., 4]; [0,0,0,0] if empty."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    masks = masks.flatten(0, -3) if masks.dim() > 2 else masks.unsqueeze(0)
    if masks.device.type == "cpu":
        boxes = _mask_to_box_numpy(masks)
    else:
        boxes = _mask_to_box_torch(masks)
    return boxes.reshape(*shape[:-2], 4)


def _mask_to_box_torch(masks: torch.Tensor) -> torch.Tensor:
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # [B, H]
    cols = masks.any(dim=-2)  # [B, W]
    row_idx = torch.arange(h, device=masks.device)[None, :]
    col_idx = torch.arange(w, device=masks.device)[None, :]
    bottom = (rows * row_idx).max(dim=-1).values
    top = (row_idx + h * ~rows).min(dim=-1).values
    right = (cols * col_idx).max(dim=-1).values
    left = (col_idx + w * ~cols).min(dim=-1).values
    empty = (right < left) | (bottom < top)
    return torch.stack([left, top, right, bottom], dim=-1) * (~empty).unsqueeze(-1)


def _mask_to_box_numpy(masks: torch.Tensor) -> torch.Tensor:
    # numpy's axis reductions over bool masks are much faster on the CPU than torch's.
    out = np.zeros((masks.shape[0], 4), dtype=np.int64)
    for i, mask in enumerate(masks.numpy()):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(mask.any(axis=0))
            out[i] = (cols[0], rows[0], cols[-1], rows[-1])
    return torch.from_numpy(out)


def box_xyxy_to_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    box_xywh = deepcopy(box_xyxy)
    box_xywh[2] = box_xywh[2] - box_xywh[0]
    box_xywh[3] = box_xywh[3] - box_xywh[1]
    return box_xywh


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of XYXY boxes [N, 4] -> [N] (no +1: boxes are continuous)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of XYXY boxes [N, 4] x [M, 4] -> [N, M]."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression as ``torchvision.ops.nms``.

    boxes [N, 4] XYXY, scores [N] -> int64 indices of kept boxes, by decreasing score (ties: lower index
    first). A box is suppressed when its IoU with a kept, higher-scored box is > iou_threshold.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    # float32 like torchvision's kernel, so IoUs right at the threshold round the same way.
    sorted_boxes = boxes[order].float()
    ious = box_iou(sorted_boxes, sorted_boxes)
    # NaN IoU (two empty boxes) compares False, so it never suppresses, as in torchvision's kernel.
    overlaps = (ious > iou_threshold).cpu().numpy()
    n = len(order)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    # The greedy pass is inherently sequential over kept boxes; each step is a vectorised row update.
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1 :] |= overlaps[i, i + 1 :]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS applied independently per category ``idxs``, as ``torchvision.ops.batched_nms``.

    Returns int64 indices of kept boxes sorted by decreasing score (ties: lower index first).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    # Shift each category to its own region so that boxes of different categories never overlap.
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# --- run-length encodings --------------------------------------------------------------------------------


def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """Bool masks [B, H, W] -> uncompressed COCO RLEs ({"size": [H, W], "counts": [...]}, column-major).

    Counts alternate background/foreground runs starting with background (a leading 0 if the first pixel
    is foreground). All masks are encoded in one pass over the change points.
    """
    b, h, w = tensor.shape
    if b == 0:
        return []
    flat = np.ascontiguousarray(tensor.cpu().numpy().astype(bool, copy=False).transpose(0, 2, 1)).reshape(b, -1)
    if flat.shape[1] == 0:
        return [{"size": [h, w], "counts": [0]} for _ in range(b)]
    row_len = max(h * w - 1, 1)
    changes = np.flatnonzero(flat[:, 1:] != flat[:, :-1])  # row-major over [B, HW-1]
    mask_of_change = changes // row_len
    change_pos = changes % row_len + 1
    bounds = np.searchsorted(mask_of_change, np.arange(b + 1))
    out = []
    for i in range(b):
        cut = np.concatenate([[0], change_pos[bounds[i] : bounds[i + 1]], [h * w]])
        runs = np.diff(cut).tolist()
        counts = [0] + runs if flat[i, 0] else runs
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> bool mask [H, W]."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h}*{w}={h * w}")
    values = np.arange(len(counts)) % 2 == 1
    mask = np.repeat(values, counts)
    return mask.reshape(w, h).transpose()


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


# COCO's compressed counts: each count (after the 3rd, as the difference from the count two before) is
# written as little-endian 5-bit groups with a sign bit (0x10) in the last group and a continuation bit
# (0x20) in every other, each group offset by 48 into printable ASCII (pycocotools rleToString).
_GROUP_BITS = 5
_MAX_GROUPS = 12  # 60 bits: far beyond any mask size (counts are at most H*W)


def encode_coco_counts(counts: Sequence[int]) -> str:
    """Uncompressed RLE counts -> COCO compressed counts string."""
    cnts = np.asarray(counts, dtype=np.int64)
    if cnts.size == 0:
        return ""
    diffs = cnts.copy()
    diffs[3:] -= cnts[1:-2]
    largest = int(np.abs(diffs).max())
    if largest >= 2 ** (_MAX_GROUPS * _GROUP_BITS - 1):
        raise ValueError("RLE count too large for COCO compressed encoding")
    # Enough groups for the largest value and its sign bit, plus one that is always empty.
    width = min(largest.bit_length() // _GROUP_BITS + 2, _MAX_GROUPS)
    shifts = np.arange(width, dtype=np.int64) * _GROUP_BITS
    groups = (diffs[:, None] >> shifts[None, :]) & 0x1F  # arithmetic shift keeps the sign
    rest = diffs[:, None] >> (shifts[None, :] + _GROUP_BITS)
    sign_bit = (groups & 0x10) != 0
    more = np.where(sign_bit, rest != -1, rest != 0)
    n_groups = np.argmin(more, axis=1) + 1  # first group after which nothing is left
    used = np.arange(width)[None, :] < n_groups[:, None]
    chars = groups + 48 + np.where(more, 0x20, 0)
    return chars[used].astype(np.uint8).tobytes().decode("ascii")


def decode_coco_counts(s: str) -> list[int]:
    """COCO compressed counts string -> uncompressed RLE counts."""
    codes = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return []
    if codes.min() < 0 or codes.max() > 0x3F:
        raise ValueError("not a COCO compressed RLE string: characters outside '0'..'o'")
    last = (codes & 0x20) == 0
    if not last[-1]:
        raise ValueError("truncated COCO compressed RLE string")
    value_ends = np.flatnonzero(last)
    value_starts = np.concatenate([[0], value_ends[:-1] + 1])
    value_of_code = np.repeat(np.arange(len(value_ends)), value_ends - value_starts + 1)
    position = np.arange(codes.size) - value_starts[value_of_code]
    if position.max() >= _MAX_GROUPS:
        raise ValueError("COCO compressed RLE string has a count too large to decode")
    contrib = (codes & 0x1F) << (position * _GROUP_BITS)
    values = np.add.reduceat(contrib, value_starts)
    n_groups = value_ends - value_starts + 1
    negative = (codes[value_ends] & 0x10) != 0
    values = np.where(negative, values | (np.int64(-1) << (n_groups * _GROUP_BITS)), values)
    cnts = values.copy()
    if cnts.size > 3:
        cnts[3::2] = cnts[1] + np.cumsum(values[3::2])
        cnts[4::2] = cnts[2] + np.cumsum(values[4::2])
    return cnts.tolist()


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE with a compressed counts string (as pycocotools.mask.frPyObjects)."""
    h, w = uncompressed_rle["size"]
    return {"size": [h, w], "counts": encode_coco_counts(uncompressed_rle["counts"])}


def coco_decode_rle(coco_rle: dict[str, Any]) -> dict[str, Any]:
    """COCO RLE with a compressed counts string -> uncompressed RLE."""
    h, w = coco_rle["size"]
    counts = coco_rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [h, w], "counts": decode_coco_counts(counts)}


# --- small regions ---------------------------------------------------------------------------------------

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fills holes ("holes") or drops islands ("islands") smaller than area_thresh pixels.

    Regions are 8-connected. Returns (mask [H, W] bool, changed). If every island is small, the largest
    is kept.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    # Imported here so that only min_mask_region_area > 0 needs scipy.
    from scipy import ndimage

    correct_holes = mode == "holes"
    working_mask = correct_holes ^ mask.astype(bool)
    regions, n_regions = ndimage.label(working_mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if correct_holes:
        # Label 0 is the mask itself; small background components join it.
        fill = np.zeros(n_regions + 1, dtype=bool)
        fill[0] = True
        fill[small] = True
    else:
        fill = np.ones(n_regions + 1, dtype=bool)
        fill[0] = False
        fill[small] = False
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[regions], True
