"""Exact boxes of full-resolution masks, found from their low-res logits without upsampling the whole mask.

Everything mode needs a box for every candidate mask (for box NMS and the crop-edge filter), but a pixel mask
only for the few that NMS keeps. The full-resolution logits are two bilinear resizes of the low-res ones
(`upscale_low_res_logits`), and bilinear resizing is separable: along each axis every output line is a
convex combination of at most four low-res lines. So:

- a full-resolution row can only hold a positive pixel if one of its low-res source rows holds a value above
  the threshold: rows without one are skipped unseen;
- the other rows are evaluated one axis at a time, a row of W values from four low-res rows, in float64;
- a value clearly above or below the threshold (by more than the float32 rounding of torch's resize can
  move it) decides the row; a value within that margin sends the mask to the exact path (torch's own
  upsampling), so the boxes equal `batched_mask_to_box(upscale_low_res_logits(...) > threshold)` always.

The box's top is the first row with a positive pixel, its bottom the last, and left and right likewise over
columns: for most masks a handful of rows and columns are evaluated instead of H * W pixels.
"""

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

# How far torch's float32 resize can be from the float64 evaluation here, as a fraction of the mask's largest
# |logit|. Both use torch's own float32 interpolation weights (read off resizing an identity matrix), so they
# differ only by torch's float32 rounding: at most ~1.5 ulp of the largest value in each of the four 1-D
# passes, 7e-7 in all; the margin is 14 times that. A value this close to the threshold goes the exact way.
_MARGIN = 1e-5
# The most rows (or columns) evaluated at once while searching for the first positive one.
_BLOCK = 8


class AxisMap:
    """One axis of upscale_low_res_logits as a sparse linear map: out[o] = sum_k weight[o, k] * low[index[o, k]].

    index, weight: [out_len, 4] numpy arrays (float64 products of torch's float32 weights of the two resizes;
    unused taps have weight 0). reads: how many low-res lines the axis reads at all.
    """

    def __init__(self, low_len: int, frame_len: int, input_len: int, original_len: int) -> None:
        # Upsampling to the encoder frame (cropped to the resized image), then resizing to the original size.
        frame_index, frame_weight = _two_taps(low_len, frame_len, input_len)  # [input_len, 2]
        out_index, out_weight = _two_taps(input_len, original_len, original_len)  # [original_len, 2]
        # numpy: the search below works on a few short lines at a time, where torch's per-call cost dominates.
        self.index = frame_index[out_index].reshape(original_len, 4).numpy()
        self.weight = (out_weight[:, :, None] * frame_weight[out_index]).reshape(original_len, 4).numpy()
        self.reads = int(self.index[self.weight != 0].max()) + 1


def _two_taps(in_len: int, out_len: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `keep` outputs of F.interpolate(linear, align_corners=False) from in_len to out_len: for each,
    its two input indices [keep, 2] and their weights [keep, 2] (float64 copies of torch's float32 weights,
    read off resizing the identity, so they are the ones torch uses whatever its build computes them with)."""
    identity = torch.eye(in_len, dtype=torch.float32)[None]
    matrix = F.interpolate(identity, out_len, mode="linear", align_corners=False)[0, :, :keep].t()  # [keep, in]
    index = matrix.abs().topk(2, dim=1).indices
    return index, torch.gather(matrix, 1, index).to(torch.float64)


@functools.lru_cache(maxsize=8)
def mask_extent(
    low_hw: tuple[int, int], frame: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> "MaskExtent":
    """A MaskExtent for these sizes, kept for the next batches of the same image."""
    return MaskExtent(low_hw, frame, input_size, original_size)


class MaskExtent:
    """Boxes of the masks upscale_low_res_logits(model, low_res, input_size, original_size) > threshold."""

    def __init__(
        self, low_hw: tuple[int, int], frame: int, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> None:
        self.rows = AxisMap(low_hw[0], frame, int(input_size[0]), int(original_size[0]))
        self.cols = AxisMap(low_hw[1], frame, int(input_size[1]), int(original_size[1]))

    def boxes(self, low_res: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """low_res [N, h, w] -> XYXY boxes [N, 4] (int64, inclusive max index; zeros for an empty mask) and
        exact [N] bool: False where a logit too close to the threshold left the box to the exact path (the
        caller computes those boxes from the upsampled mask)."""
        low = low_res.detach()[:, : self.rows.reads, : self.cols.reads].to(torch.float64).numpy()
        boxes = np.zeros((low.shape[0], 4), dtype=np.int64)
        exact = np.ones(low.shape[0], dtype=bool)
        margins = _MARGIN * np.maximum(np.abs(low).max(axis=(1, 2)), 1.0)
        # The largest logit of each low-res row and column: a bound on every full-resolution line it feeds.
        row_bound = _line_bounds(self.rows, low.max(axis=2))  # [N, H]
        col_bound = _line_bounds(self.cols, low.max(axis=1))  # [N, W]
        for n, mask in enumerate(low):
            margin = float(margins[n])
            rows = np.flatnonzero(row_bound[n] > threshold - margin)
            cols = np.flatnonzero(col_bound[n] > threshold - margin)

            def row_values(lines: np.ndarray, mask: np.ndarray = mask) -> np.ndarray:
                return _eval_lines(mask, self.rows, self.cols, lines)

            def col_values(lines: np.ndarray, mask: np.ndarray = mask) -> np.ndarray:
                return _eval_lines(mask.T, self.cols, self.rows, lines)

            top = _first_positive(rows, row_values, threshold, margin)
            if top == -1:  # no positive pixel: the empty mask's zero box
                continue
            edges = (top, _first_positive(rows[::-1], row_values, threshold, margin))
            edges += (_first_positive(cols, col_values, threshold, margin),)
            edges += (_first_positive(cols[::-1], col_values, threshold, margin),)
            if any(edge is None or edge < 0 for edge in edges):
                exact[n] = False
                continue
            top, bottom, left, right = edges
            boxes[n] = (left, top, right, bottom)
        return torch.from_numpy(boxes), torch.from_numpy(exact)


def _line_bounds(axis: AxisMap, line_max: np.ndarray) -> np.ndarray:
    """line_max [N, low_len] (each low-res line's largest value) -> [N, out_len]: the largest value any
    full-resolution line can take (a convex combination of the low-res lines it reads)."""
    gathered = line_max[:, axis.index]  # [N, out_len, taps]
    return np.where(axis.weight != 0, gathered, -np.inf).max(axis=2)


def _eval_lines(low: np.ndarray, along: AxisMap, across: AxisMap, lines: np.ndarray) -> np.ndarray:
    """Full-resolution lines (rows of `along`'s axis) of one mask, low [h, w] float64 -> [len(lines), W]."""
    mixed = np.einsum("lk,lkw->lw", along.weight[lines], low[along.index[lines]])  # [L, w]
    return np.einsum("ok,lok->lo", across.weight, mixed[:, across.index])  # [L, W]


def _first_positive(
    candidates: np.ndarray, evaluate: Callable[[np.ndarray], np.ndarray], threshold: float, margin: float
) -> int | None:
    """The first of the candidate lines (in the order given) holding a value above threshold: its index,
    -1 if none does, None if a line before it has a value too close to the threshold to decide."""
    start, size = 0, 1
    while start < len(candidates):
        # Most masks are decided by their first candidate line: start with one, then take more at a time.
        block = candidates[start : start + size]
        start, size = start + size, min(2 * size, _BLOCK)
        peaks = evaluate(block).max(axis=1)
        positive = peaks > threshold + margin
        decided = np.flatnonzero(peaks > threshold - margin)
        if len(decided):
            first = int(decided[0])
            return int(block[first]) if positive[first] else None
    return -1
