"""SAM2AutomaticMaskGenerator ("everything" mode for SAM 2): segment a whole image from a grid of point prompts,
optionally refining each mask once with its own low-res logits as mask input (use_m2m)."""

from typing import Any

import numpy as np
import torch

from ..sam.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from ..sam.automatic import OUTPUT_MODES, SamAutomaticMaskGenerator, annotations_from, box_nms, cross_crop_nms
from ..sam.predictor import check_image
from .sam2_base import SAM2Base
from .sam2_image_predictor import LOW_RES_LOGIT_LIMIT, SAM2ImagePredictor


class SAM2AutomaticMaskGenerator:
    def __init__(
        self,
        model: SAM2Base,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        """Arguments mean what they mean in Meta's SAM2AutomaticMaskGenerator (and in SamAutomaticMaskGenerator):
        points_per_side or point_grids set the prompts; pred_iou_thresh and stability_score_thresh filter masks;
        box_nms_thresh / crop_nms_thresh remove duplicates within / across crops; min_mask_region_area > 0 fills
        small holes and removes small islands; use_m2m refines each mask once with its own low-res logits;
        multimask_output asks for three masks per point.
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}")
        if points_per_side is not None:
            if int(points_per_side) < 1:
                raise ValueError(f"points_per_side must be at least 1, got {points_per_side}")
            self.point_grids = build_all_layer_point_grids(
                int(points_per_side), int(crop_n_layers), int(crop_n_points_downscale_factor)
            )
        else:
            self.point_grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]

        self.predictor = SAM2ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output

    @torch.no_grad()
    def generate(self, image: np.ndarray, features: dict | None = None) -> list[dict[str, Any]]:
        """Masks for the whole HxWx3 uint8 RGB image: one dict per mask with segmentation (per output_mode),
        area, bbox (XYWH), predicted_iou, point_coords ([[x, y]]), stability_score and crop_box (XYWH).
        ``features``: the whole image's features as ``SAM2ImagePredictor.set_features`` takes them (e.g. from a
        cache), used for the first crop layer instead of encoding ``image`` again."""
        image = check_image(image)
        mask_data = self._generate_masks(image, features)
        if len(mask_data) == 0:
            return []
        if self.min_mask_region_area > 0:
            mask_data = SamAutomaticMaskGenerator.postprocess_small_regions(
                mask_data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return annotations_from(mask_data, self.output_mode)

    def _generate_masks(self, image: np.ndarray, features: dict | None = None) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size, features if layer_idx == 0 else None))
        if len(crop_boxes) > 1 and len(data) > 0:
            data.filter(cross_crop_nms(data, self.crop_nms_thresh))
        data.to_numpy()
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
        features: dict | None = None,
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        if features is not None:  # The whole image (layer 0), already encoded.
            self.predictor.set_features(features, cropped_im_size)
        else:
            self.predictor.set_image(cropped_im)

        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale
        data = MaskData()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, cropped_im_size, crop_box, orig_size))
        self.predictor.reset_predictor()
        if len(data) == 0:
            return MaskData()

        data.filter(box_nms(data, self.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
        return data

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]
    ) -> MaskData:
        orig_h, orig_w = orig_size
        transforms = self.predictor._transforms
        points_t = torch.as_tensor(points, dtype=torch.float32, device=self.predictor.device)
        in_points = transforms.transform_coords(points_t, normalize=True, orig_hw=im_size)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        if self.use_m2m:
            # The refinement feeds these logits back; the exact formulation keeps its near-tied IoUs in Meta's order.
            masks, iou_preds, low_res_masks = self.predictor._predict(
                in_points[:, None, :], in_labels[:, None], multimask_output=self.multimask_output, return_logits=True
            )
        else:
            masks, iou_preds, low_res_masks = self._predict_points(in_points[:, None, :], in_labels[:, None])
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=points_t.repeat_interleave(masks.shape[1], dim=0),
            low_res_masks=low_res_masks.flatten(0, 1),
        )
        del masks

        if self.use_m2m:
            # One refinement step: each mask's own low-res logits as mask input, with its point, single mask.
            in_points = transforms.transform_coords(data["points"], normalize=True, orig_hw=im_size)
            labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            masks, ious = self.refine_with_m2m(in_points, labels, data["low_res_masks"], self.points_per_batch)
            data["masks"] = masks.squeeze(1)
            data["iou_preds"] = ious.squeeze(1)

        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)

        data["masks"] = data["masks"] > self.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        del data["low_res_masks"]
        return data

    @torch.no_grad()
    def _predict_points(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """predictor._predict(point_coords [B, 1, 2], point_labels [B, 1], multimask_output, return_logits=True)
        for prompts without mask inputs, which all see the same image: the decoder's shared-image path."""
        predictor, model = self.predictor, self.predictor.model
        sparse, dense = model.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        features = predictor._features
        masks, iou_pred, _, _ = model.sam_mask_decoder.predict_masks_shared_image(
            image_embeddings=features["image_embed"],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense[:1],
            high_res_features=features["high_res_feats"],
        )
        low_res_masks, iou_pred = model.sam_mask_decoder.select_masks(masks, iou_pred, self.multimask_output)
        full_res = predictor._transforms.postprocess_masks(low_res_masks, predictor._orig_hw[-1])
        return full_res, iou_pred, torch.clamp(low_res_masks, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)

    def refine_with_m2m(
        self, points: torch.Tensor, point_labels: torch.Tensor, low_res_masks: torch.Tensor, points_per_batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points [N, 2] (model frame), labels [N], low-res logits [N, 256, 256] -> masks [N, 1, H, W] and IoUs [N, 1]."""
        new_masks, new_iou_preds = [], []
        for cur_points, cur_labels, low_res_mask in batch_iterator(
            points_per_batch, points, point_labels, low_res_masks
        ):
            best_masks, best_iou_preds, _ = self.predictor._predict(
                cur_points[:, None, :],
                cur_labels[:, None],
                mask_input=low_res_mask[:, None, :],
                multimask_output=False,
                return_logits=True,
            )
            new_masks.append(best_masks)
            new_iou_preds.append(best_iou_preds)
        return torch.cat(new_masks, dim=0), torch.cat(new_iou_preds, dim=0)
