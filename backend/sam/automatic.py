"""Automatic mask generation ("everything" mode): segment a whole image from a grid of point prompts."""

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..runtime import heap
from .amg import (
    MaskData,
    area_from_rle,
    batched_mask_to_box,
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    coverage_order,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    remove_small_regions,
    rle_to_mask,
    threshold_masks,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .folded_decoder import decode_point_tokens, image_first_block
from .mask_extent import mask_extent
from .predictor import SamPredictor, check_image
from .sam import Sam

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Masks upsampled to full resolution at once. Small chunks keep each pass over the full-resolution logits
# in cache: 4 was ~14% faster than 16 on a 1200x1800 image (and bounds memory).
_UPSAMPLE_CHUNK = 4
# Points decoded at once within a batch. The image tokens of a chunk ([16, 4096, 256], 67 MB) and what the
# transformer makes from them are freed before the next chunk: a batch of 64 at once held ~1.3 GB for no
# measurable gain (16x16 grid, vit_b: 6.1-6.3 s either way). A multiple of 4: the same bits as any other.
_DECODE_CHUNK = 16


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        """Prompts SAM with a grid of points and keeps the good, stable, non-duplicate masks.

        Arguments mean what they mean in segment-anything's SamAutomaticMaskGenerator: points_per_side
        (or explicit point_grids, one [N, 2] array per crop layer, normalised to [0, 1]) sets the prompts;
        pred_iou_thresh and stability_score_thresh (stability = IoU of the mask thresholded at
        +/- stability_score_offset) filter masks; box_nms_thresh removes duplicates within a crop and
        crop_nms_thresh across crops; crop_n_layers > 0 also runs on 2^i x 2^i overlapping crops;
        min_mask_region_area > 0 fills small holes and drops small islands; output_mode chooses the
        segmentation format: "binary_mask" (HxW bool array), "uncompressed_rle" or "coco_rle".
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if points_per_side is not None and int(points_per_side) < 1:
            raise ValueError(f"points_per_side must be at least 1, got {points_per_side}")
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}")
        if int(crop_n_layers) < 0:
            raise ValueError(f"crop_n_layers must be 0 or more, got {crop_n_layers}")
        if int(crop_n_points_downscale_factor) < 1:
            raise ValueError(f"crop_n_points_downscale_factor must be at least 1, got {crop_n_points_downscale_factor}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be 0 or more, got {min_mask_region_area}")

        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                int(points_per_side), int(crop_n_layers), int(crop_n_points_downscale_factor)
            )
        else:
            self.point_grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
            if len(self.point_grids) != crop_n_layers + 1:
                raise ValueError(
                    f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(self.point_grids)}"
                )
            for grid in self.point_grids:
                if grid.ndim != 2 or grid.shape[1] != 2:
                    raise ValueError(f"each point grid must be [N, 2] (x, y in [0, 1]), got shape {grid.shape}")

        self.predictor = SamPredictor(model)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        # Seconds spent in each stage by the last generate(): "encoder", "decoder", "postprocess".
        self.last_timings: dict[str, float] = {}

    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        image_embedding: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
        on_update: "UpdateCallback | None" = None,
    ) -> list[dict[str, Any]]:
        """Masks for the whole image.

        image: HxWx3 uint8 RGB. image_embedding: optional [1, 256, 64, 64] embedding of this image, already
        computed (e.g. cached by the server); the full-image crop then skips the encoder. progress: called
        with the fraction of prompt batches done (0..1); an exception it raises aborts the run.

        on_update(added, removed): streams the result while it is computed. After each batch of points,
        ``added`` lists (id, annotation) of masks that are now in the result (the batch's masks that pass the
        filters and box NMS against the crop's masks so far) and ``removed`` the ids of masks shown before that
        are not (a later, better duplicate suppressed them). A last call before returning makes the shown set
        exactly the returned one (cross-crop NMS, small regions). The grid is then decoded in an order that
        covers the image early (batches of points spread over it, the first ones smaller), and the masks are
        put back in grid order before NMS, so the result is the one a run without on_update returns.

        Returns one dict per mask: segmentation (per output_mode), area (pixels), bbox (XYWH), predicted_iou,
        point_coords ([[x, y]] prompt), stability_score, crop_box (XYWH).
        """
        image = check_image(image)
        self.last_timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        stream = _Stream(self, on_update) if on_update is not None else None
        with heap.reused_large_buffers():  # batches reallocate the same large tensors: keep them mapped
            mask_data = self._generate_masks(image, image_embedding, progress, stream)

        started = time.perf_counter()
        if self.min_mask_region_area > 0:
            before = list(mask_data["rles"])
            mask_data = self.postprocess_small_regions(
                mask_data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
            if stream is not None:  # A mask whose holes or islands changed is another mask: a new id.
                kept_before = {id(rle) for rle in before}
                mask_data["ids"] = [
                    i if id(rle) in kept_before else stream.new_id()
                    for i, rle in zip(mask_data["ids"], mask_data["rles"], strict=True)
                ]
        annotations = annotations_from(mask_data, self.output_mode)
        self.last_timings["postprocess"] += time.perf_counter() - started
        if stream is not None:
            stream.finish([int(i) for i in mask_data["ids"]], annotations)
        return annotations

    def _generate_masks(
        self,
        image: np.ndarray,
        image_embedding: torch.Tensor | None,
        progress: Callable[[float], None] | None,
        stream: "_Stream | None" = None,
    ) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        plans = [self._batch_sizes(len(self.point_grids[layer]), stream is not None) for layer in layer_idxs]
        tracker = _ProgressTracker(sum(len(plan) for plan in plans), progress)

        data = MaskData()
        first_id = 0
        for crop_box, layer_idx, plan in zip(crop_boxes, layer_idxs, plans, strict=True):
            embedding = image_embedding if layer_idx == 0 else None
            crop_data, first_id = self._process_crop(
                image, crop_box, layer_idx, orig_size, embedding, tracker, plan, first_id, stream
            )
            data.cat(crop_data)

        started = time.perf_counter()
        if len(crop_boxes) > 1 and len(data) > 0:
            data.filter(cross_crop_nms(data, self.crop_nms_thresh))
        data.to_numpy()
        self.last_timings["postprocess"] += time.perf_counter() - started
        return data

    def _batch_sizes(self, n_points: int, streaming: bool) -> list[int]:
        """How many points each batch of a crop decodes.

        Streaming, the first batches are a 16th, a quarter and a half of points_per_batch (multiples of 4, at
        least 4), so the first masks come out sooner. Batch sizes that are multiples of 4 give the same bits as full batches on
        the CPU (the GEMM kernels' row blocking), so the result does not depend on the split.
        """
        sizes: list[int] = []
        if streaming:
            for size in (self.points_per_batch // 16, self.points_per_batch // 4, self.points_per_batch // 2):
                size -= size % 4
                if size >= 4 and sum(sizes) + size < n_points:
                    sizes.append(size)
        done = sum(sizes)
        while done < n_points:
            sizes.append(min(self.points_per_batch, n_points - done))
            done += sizes[-1]
        return sizes

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
        image_embedding: torch.Tensor | None,
        tracker: "_ProgressTracker",
        batch_sizes: list[int],
        first_id: int,
        stream: "_Stream | None",
    ) -> tuple[MaskData, int]:
        """One crop's masks (after its NMS), and the first mask id left for the next crop.

        Mask ids number the (grid point, mask token) pairs of all crops in grid order.
        """
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]

        started = time.perf_counter()
        if image_embedding is not None:
            input_size = self.predictor.transform.get_preprocess_shape(
                cropped_im_size[0], cropped_im_size[1], self.predictor.transform.target_length
            )
            self.predictor.set_embedding(image_embedding, cropped_im_size, input_size)
        else:
            self.predictor.set_image(cropped_im)
        self.last_timings["encoder"] += time.perf_counter() - started

        points_scale = np.array(cropped_im_size)[None, ::-1]
        grid = self.point_grids[crop_layer_idx]
        points_for_image = grid * points_scale
        order = np.arange(len(grid))
        if stream is not None:
            order = coverage_order(grid)
            stream.crop_ids = set()

        data = MaskData()
        masks_per_point = 0
        start = 0
        for size in batch_sizes:
            indices = order[start : start + size]
            start += size
            batch, masks_per_point = self._process_batch(
                points_for_image[indices], cropped_im_size, crop_box, orig_size
            )
            # The id of a (point, mask) pair: its place in grid order, as if the grid were decoded row by row.
            grid_index = torch.as_tensor(indices, dtype=torch.int64)[batch["pair"] // masks_per_point]
            batch["ids"] = first_id + grid_index * masks_per_point + batch["pair"] % masks_per_point
            del batch["pair"]
            data.cat(batch)
            if stream is not None:
                stream.batch_done(data, crop_box, orig_size)
            tracker.advance()
        next_id = first_id + len(grid) * masks_per_point

        started = time.perf_counter()
        if len(data) == 0:
            self.predictor.reset_image()
            for key in ("low_res", "pair"):
                if key in data:
                    del data[key]
            data["rles"] = []
            return data, next_id
        if stream is not None:  # Back in grid order: NMS breaks score ties by it.
            data.filter(torch.argsort(data["ids"]))
        keep = box_nms(data, self.box_nms_thresh)
        data.filter(keep)
        # Run-length encoding is the costliest step per mask, so only NMS survivors are encoded: their
        # full-resolution masks are rebuilt from the kept low-res logits (the same deterministic upsampling).
        data["rles"] = self._rles(data, crop_box, orig_size, stream)
        del data["low_res"]
        self.predictor.reset_image()
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
        self.last_timings["postprocess"] += time.perf_counter() - started
        return data, next_id

    def _rles(
        self, data: MaskData, crop_box: list[int], orig_size: tuple[int, ...], stream: "_Stream | None"
    ) -> list[dict[str, Any]]:
        """Uncompressed RLEs (in the full image) of data's rows; the ones already streamed are reused.

        Rows whose stability score is not known yet (NaN: _filter_by_box) get it here, from the same
        full-resolution logits.
        """
        known = stream.rles if stream is not None else {}
        ids = data["ids"].tolist()
        rles: list[dict[str, Any] | None] = [known.get(i) for i in ids]
        missing = [row for row, rle in enumerate(rles) if rle is None]
        stability = data["stability_score"]
        for row, mask_id in enumerate(ids):
            if rles[row] is not None and math.isnan(float(stability[row])):
                stability[row] = stream.stability[mask_id]
        for start in range(0, len(missing), _UPSAMPLE_CHUNK):
            rows = missing[start : start + _UPSAMPLE_CHUNK]
            low_res = torch.stack([data["low_res"][row] for row in rows])
            chunk_rles, chunk_stability = self._encode_masks(low_res, crop_box, orig_size)
            for row, rle, score in zip(rows, chunk_rles, chunk_stability.tolist(), strict=True):
                rles[row] = rle
                if math.isnan(float(stability[row])):
                    stability[row] = score
        return rles

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]
    ) -> tuple[MaskData, int]:
        """Decodes one batch of point prompts and keeps the masks that pass the filters.

        Predicted IoUs come out of the transformer before any mask: only the (point, mask) pairs that pass
        the IoU filter are upscaled by the decoder and then upsampled to full resolution, exactly as
        predict_torch would, so the surviving masks are the same.

        Returns the kept rows, each with its "pair" (point index * masks per point + mask index, in the
        batch), and the number of masks per point.
        """
        model = self.predictor.model
        device = self.predictor.device

        started = time.perf_counter()
        transformed = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, dtype=torch.float, device=device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=device)
        # Only the image tokens whose low-res logits post-processing reads are upscaled (4 logits a side each).
        grid = self.predictor.features.shape[-2:]
        read = low_res_read(model, (4 * grid[0], 4 * grid[1]), self.predictor.input_size)
        tokens = (-(-read[0] // 4), -(-read[1] // 4))
        iou_chunks, low_res_chunks = [], []
        # The first block's image projections are the same for every point: once for all the chunks.
        first_block = image_first_block(model, self.predictor.features)
        for start in range(0, len(in_points), _DECODE_CHUNK):
            decoded = decode_point_tokens(
                model,
                self.predictor.features,
                in_points[start : start + _DECODE_CHUNK, None, :],
                in_labels[start : start + _DECODE_CHUNK, None],
                extent=tokens,
                first_block=first_block,
            )
            iou_chunks.append(decoded.iou_pred)
            n_masks = decoded.iou_pred.shape[1]
            pair = torch.arange(decoded.iou_pred.numel(), device=decoded.iou_pred.device)
            if self.pred_iou_thresh > 0.0:
                pair = pair[decoded.iou_pred.flatten(0, 1).float() > self.pred_iou_thresh]
            # Only the masks that passed the IoU filter are upscaled, before the next chunk's image tokens exist.
            low_res_chunks.append(decoded.masks(pair // n_masks, pair % n_masks))
            del decoded
        iou_preds = torch.cat(iou_chunks)
        data = MaskData(
            iou_preds=iou_preds.flatten(0, 1).float(),
            points=torch.as_tensor(points.repeat(n_masks, axis=0)),
            pair=torch.arange(iou_preds.numel(), device=iou_preds.device),
        )
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        low_res = torch.cat(low_res_chunks)
        self.last_timings["decoder"] += time.perf_counter() - started

        started = time.perf_counter()
        data["low_res"] = low_res
        if self.stability_score_thresh > 0.0:
            keep, stability, boxes = self._filter_by_stability(data["low_res"], crop_box, orig_size)
        else:
            keep, stability, boxes = self._filter_by_box(data["low_res"], crop_box, orig_size)
        data.filter(keep)
        data["stability_score"] = stability
        data["boxes"] = boxes
        # A list of rows: concatenating batches then costs nothing, and RLEs are made after NMS.
        data["low_res"] = list(data["low_res"].unbind(0))
        self.last_timings["postprocess"] += time.perf_counter() - started
        return data, n_masks

    def _filter_by_stability(
        self, low_res: torch.Tensor, crop_box: list[int], orig_size: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-res logits [N, 256, 256] of one crop -> which pass the stability and crop-edge filters, with the
        kept masks' stability scores and XYXY boxes (crop frame). Every mask is upsampled to full resolution,
        in chunks (bounded memory)."""
        keeps, stability, boxes = [torch.zeros(0, dtype=torch.bool)], [torch.zeros(0)], [torch.zeros(0, 4)]
        for start in range(0, len(low_res), _UPSAMPLE_CHUNK):
            keep, chunk_stability, chunk_boxes = self._filter_full_resolution(
                low_res[start : start + _UPSAMPLE_CHUNK], crop_box, orig_size
            )
            keeps.append(keep)
            stability.append(chunk_stability)
            boxes.append(chunk_boxes.to(boxes[0].dtype))
        return torch.cat(keeps), torch.cat(stability), torch.cat(boxes).long()

    def _filter_by_box(
        self, low_res: torch.Tensor, crop_box: list[int], orig_size: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """_filter_by_stability when stability does not filter: only the crop-edge filter, on the masks' exact
        boxes found from the low-res logits (mask_extent), so no mask is upsampled here. The stability scores
        are NaN: _rles fills them in for the masks NMS keeps, from the full-resolution logits it makes anyway."""
        model = self.predictor.model
        orig_h, orig_w = orig_size
        extent = mask_extent(
            tuple(low_res.shape[-2:]),
            model.image_size,
            tuple(self.predictor.input_size),
            tuple(self.predictor.original_size),
        )
        boxes, exact = extent.boxes(low_res, model.mask_threshold)
        unsure = torch.nonzero(~exact).flatten()
        for start in range(0, len(unsure), _UPSAMPLE_CHUNK):  # too close to the threshold to tell: upsample
            rows = unsure[start : start + _UPSAMPLE_CHUNK]
            logits = upscale_low_res_logits(
                model, low_res[rows], self.predictor.input_size, self.predictor.original_size
            )
            boxes[rows] = batched_mask_to_box(threshold_masks(logits, model.mask_threshold)).long()
        keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        return keep, torch.full((int(keep.sum()),), torch.nan), boxes[keep]

    def _filter_full_resolution(
        self, low_res: torch.Tensor, crop_box: list[int], orig_size: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-res logits [N, 256, 256] of one crop -> which pass the stability and crop-edge filters.

        Returns keep [N] bool, and for the kept masks: stability scores and XYXY boxes (crop frame).
        """
        model = self.predictor.model
        orig_h, orig_w = orig_size
        logits = upscale_low_res_logits(model, low_res, self.predictor.input_size, self.predictor.original_size)
        score = calculate_stability_score(logits, model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = score >= self.stability_score_thresh
        else:
            keep = torch.ones_like(score, dtype=torch.bool)
        masks = threshold_masks(logits if bool(keep.all()) else logits[keep], model.mask_threshold)
        del logits
        boxes = batched_mask_to_box(masks)
        near_edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        keep[torch.nonzero(keep).flatten()[near_edge]] = False
        return keep, score[keep], boxes[~near_edge]

    def _encode_masks(
        self, low_res: torch.Tensor, crop_box: list[int], orig_size: tuple[int, ...]
    ) -> tuple[list[dict[str, Any]], torch.Tensor]:
        """Low-res logits [N, 256, 256] of one crop -> uncompressed RLEs of the masks in the full image, and
        their stability scores [N]."""
        model = self.predictor.model
        orig_h, orig_w = orig_size
        logits = upscale_low_res_logits(model, low_res, self.predictor.input_size, self.predictor.original_size)
        stability = calculate_stability_score(logits, model.mask_threshold, self.stability_score_offset)
        masks = threshold_masks(logits, model.mask_threshold)
        del logits
        return mask_to_rle_pytorch(uncrop_masks(masks, crop_box, orig_h, orig_w)), stability

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fills small holes and drops small islands in every mask, then re-runs NMS.

        Masks that did not change win NMS ties over edited ones (score 1 vs 0), as in the reference.
        """
        if len(mask_data["rles"]) == 0:
            return mask_data
        new_masks, scores = [], []
        for rle in mask_data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(torch.as_tensor(mask).unsqueeze(0))
            scores.append(float(not (changed_holes or changed_islands)))
        masks = torch.cat(new_masks, dim=0)
        boxes = batched_mask_to_box(masks)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]), iou_threshold=nms_thresh
        )
        for i_mask in keep.tolist():
            if scores[i_mask] == 0.0:
                mask_data["rles"][i_mask] = mask_to_rle_pytorch(masks[i_mask].unsqueeze(0))[0]
                new_box = boxes[i_mask]
                if isinstance(mask_data["boxes"], np.ndarray):
                    new_box = new_box.numpy()
                mask_data["boxes"][i_mask] = new_box
        mask_data.filter(keep)
        return mask_data


def annotations_from(mask_data: MaskData, output_mode: str) -> list[dict[str, Any]]:
    """Rows of mask_data (numpy columns, uncompressed "rles") -> the annotation dicts an automatic mask generator
    returns: segmentation (per output_mode), area, bbox (XYWH), predicted_iou, point_coords, stability_score and
    crop_box (XYWH)."""
    if output_mode == "coco_rle":
        segmentations = [coco_encode_rle(rle) for rle in mask_data["rles"]]
    elif output_mode == "binary_mask":
        segmentations = [rle_to_mask(rle) for rle in mask_data["rles"]]
    else:
        segmentations = mask_data["rles"]
    return [
        {
            "segmentation": segmentation,
            "area": area_from_rle(mask_data["rles"][idx]),
            "bbox": box_xyxy_to_xywh(mask_data["boxes"][idx]).tolist(),
            "predicted_iou": float(mask_data["iou_preds"][idx]),
            "point_coords": [mask_data["points"][idx].tolist()],
            "stability_score": float(mask_data["stability_score"][idx]),
            "crop_box": box_xyxy_to_xywh(mask_data["crop_boxes"][idx]).tolist(),
        }
        for idx, segmentation in enumerate(segmentations)
    ]


def box_nms(data: MaskData, iou_threshold: float) -> torch.Tensor:
    """Indices of one crop's masks that box NMS keeps, by decreasing predicted IoU (ties in row order)."""
    return batched_nms(
        data["boxes"].float(), data["iou_preds"], torch.zeros_like(data["boxes"][:, 0]), iou_threshold=iou_threshold
    )


def cross_crop_nms(data: MaskData, iou_threshold: float) -> torch.Tensor:
    """Indices of the masks of all crops that box NMS keeps, preferring masks from smaller crops (they see more
    detail)."""
    scores = 1 / box_area(data["crop_boxes"])
    return batched_nms(
        data["boxes"].float(),
        scores.to(data["boxes"].device),
        torch.zeros_like(data["boxes"][:, 0]),
        iou_threshold=iou_threshold,
    )


def low_res_read(model: Sam, low_hw: tuple[int, int], input_size: tuple[int, ...]) -> tuple[int, int]:
    """The low-res rows and columns upscale_low_res_logits reads (all of them unless the scale to the encoder
    frame is an integer): the last source index read by the resized image's last pixel (half-pixel centres),
    plus its right neighbour."""
    height, width = low_hw
    scale = model.image_size // height
    if scale * height != model.image_size or scale * width != model.image_size:
        return height, width

    def needed(input_len: int, low_len: int) -> int:
        return min(low_len, int(math.floor((input_len - 0.5) / scale - 0.5)) + 2)

    return needed(input_size[0], height), needed(input_size[1], width)


def upscale_low_res_logits(
    model: Sam, low_res: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
) -> torch.Tensor:
    """Low-res logits [N, h, w] -> [N, H, W] of the original image, equal to model.postprocess_masks.

    The padded encoder frame is only upsampled over the low-res rows and columns that the resized image
    (input_size) reads: with an integer scale, bilinear sampling of a slice that keeps one row past the
    last one read gives the same values, and a landscape image skips the padding's rows.
    """
    height, width = low_res.shape[-2:]
    scale = model.image_size // height
    if scale * height != model.image_size or scale * width != model.image_size:
        return model.postprocess_masks(low_res[:, None], input_size, original_size)[:, 0]
    rows, cols = low_res_read(model, (height, width), input_size)
    logits = torch.nn.functional.interpolate(
        low_res[:, None, :rows, :cols], (rows * scale, cols * scale), mode="bilinear", align_corners=False
    )
    logits = logits[..., : input_size[0], : input_size[1]]
    size = tuple(int(s) for s in original_size)
    return torch.nn.functional.interpolate(logits, size, mode="bilinear", align_corners=False)[:, 0]


# on_update(added: [(id, annotation)], removed: [id]).
UpdateCallback = Callable[[list[tuple[int, dict[str, Any]]], list[int]], None]


class _Stream:
    """What a streaming generate() has shown so far, and the RLEs it made (the final result reuses them)."""

    def __init__(self, generator: SamAutomaticMaskGenerator, on_update: UpdateCallback) -> None:
        self.generator = generator
        self.on_update = on_update
        self.shown: dict[int, dict[str, Any]] = {}  # id -> annotation, as sent
        self.rles: dict[int, dict[str, Any]] = {}  # id -> uncompressed RLE in the full image
        self.stability: dict[int, float] = {}  # id -> stability score, as sent
        self.crop_ids: set[int] = set()  # the shown ids of the crop being decoded
        self._next_new_id = -1

    def new_id(self) -> int:
        """An id for a mask made after decoding (small regions removed): negative, never a pair's."""
        self._next_new_id -= 1
        return self._next_new_id + 1

    def batch_done(self, crop_data: MaskData, crop_box: list[int], orig_size: tuple[int, ...]) -> None:
        """After a batch: shows the crop's masks as its NMS would keep them if the crop ended now."""
        generator = self.generator
        started = time.perf_counter()
        if len(crop_data) == 0:
            return
        rows = torch.argsort(crop_data["ids"])  # grid order, as the crop's own NMS sees them
        boxes = crop_data["boxes"][rows]
        kept = rows[
            batched_nms(
                boxes.float(),
                crop_data["iou_preds"][rows],
                torch.zeros_like(boxes[:, 0]),
                iou_threshold=generator.box_nms_thresh,
            )
        ]
        kept_ids = {int(i) for i in crop_data["ids"][kept]}
        removed = sorted(self.crop_ids - kept_ids)
        new_rows = [int(r) for r in kept if int(crop_data["ids"][r]) not in self.crop_ids]
        added = []
        if new_rows:
            subset = MaskData(
                ids=crop_data["ids"][new_rows],
                iou_preds=crop_data["iou_preds"][new_rows],
                points=uncrop_points(crop_data["points"][new_rows], crop_box),
                stability_score=crop_data["stability_score"][new_rows],
                boxes=crop_data["boxes"][new_rows],
                low_res=[crop_data["low_res"][r] for r in new_rows],
            )
            subset["rles"] = generator._rles(subset, crop_box, orig_size, self)
            subset["boxes"] = uncrop_boxes_xyxy(subset["boxes"], crop_box)
            subset["crop_boxes"] = torch.tensor([crop_box for _ in new_rows])
            del subset["low_res"]
            subset.to_numpy()
            for mask_id, rle, annotation in zip(
                subset["ids"].tolist(), subset["rles"], annotations_from(subset, generator.output_mode), strict=True
            ):
                self.rles[mask_id] = rle
                self.stability[mask_id] = annotation["stability_score"]
                added.append((mask_id, annotation))
        generator.last_timings["postprocess"] += time.perf_counter() - started
        self._send(added, removed)
        self.crop_ids = kept_ids

    def finish(self, ids: list[int], annotations: list[dict[str, Any]]) -> None:
        """Makes the shown set exactly the result: retracts what later steps removed, adds what they made."""
        final = dict(zip(ids, annotations, strict=True))
        removed = sorted(set(self.shown) - set(final))
        added = [(i, a) for i, a in final.items() if i not in self.shown]
        self._send(added, removed)

    def _send(self, added: list[tuple[int, dict[str, Any]]], removed: list[int]) -> None:
        for mask_id in removed:
            del self.shown[mask_id]
        self.shown.update(added)
        if added or removed:
            self.on_update(added, removed)


class _ProgressTracker:
    def __init__(self, total: int, callback: Callable[[float], None] | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.callback = callback

    def advance(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(min(self.done / self.total, 1.0))


def _n_batches(n_points: int, batch_size: int) -> int:
    return (n_points + batch_size - 1) // batch_size
