"""SAM2ImagePredictor: encode an image once, then predict masks for any number of prompts (Meta's interface)."""

import numpy as np
import torch

from ..sam.predictor import check_image
from .sam2_base import SAM2Base
from .transforms import SAM2Transforms

# Low-res logits are clamped to this range before they are returned (and fed back as mask input).
LOW_RES_LOGIT_LIMIT = 32.0


class SAM2ImagePredictor:
    def __init__(
        self,
        sam_model: SAM2Base,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        """Wraps `sam_model`. Masks are logits > mask_threshold; max_hole_area / max_sprinkle_area > 0 fill holes
        and remove islands up to that many low-res pixels before upsampling."""
        self.model = sam_model
        self._transforms = SAM2Transforms(
            resolution=sam_model.image_size,
            mask_threshold=mask_threshold,
            max_hole_area=max_hole_area,
            max_sprinkle_area=max_sprinkle_area,
        )
        self.mask_threshold = mask_threshold
        self.reset_predictor()

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encodes an HxWx3 uint8 RGB image and keeps its features."""
        self.reset_predictor()
        input_image = self.transform_image(image)[None].to(self.device)
        self.set_features(self.model.image_features(input_image), image.shape[:2])

    def transform_image(self, image: np.ndarray) -> torch.Tensor:
        """An HxWx3 uint8 RGB image as the encoder takes it: normalised [3, 1024, 1024] float32 on the CPU."""
        check_image(image)
        return self._transforms(image)

    def set_features(
        self,
        features: dict[str, torch.Tensor | list[torch.Tensor]],
        orig_hw: tuple[int, int],
    ) -> None:
        """Uses already computed features ({"image_embed" [1, 256, 64, 64], "high_res_feats" [s0, s1]}) of an
        image of size orig_hw (H, W), e.g. from a cache, instead of encoding again."""
        if len(orig_hw) != 2 or min(orig_hw) < 1:
            raise ValueError(f"orig_hw must be (height, width) > 0, got {tuple(orig_hw)}")
        size = self.model.sam_image_embedding_size
        image_embed = torch.as_tensor(features["image_embed"], device=self.device, dtype=torch.float32)
        if tuple(image_embed.shape) != (1, self.model.hidden_dim, size, size):
            raise ValueError(
                f"image_embed must be [1, {self.model.hidden_dim}, {size}, {size}], got {list(image_embed.shape)}"
            )
        high_res = [torch.as_tensor(f, device=self.device, dtype=torch.float32) for f in features["high_res_feats"]]
        self._features = {"image_embed": image_embed, "high_res_feats": high_res}
        self._orig_hw = [(int(orig_hw[0]), int(orig_hw[1]))]
        self._is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt (or a batch of B prompts) on the current image.

        point_coords [N, 2] or [B, N, 2] (x, y; image pixels, or [0, 1] with normalize_coords=False),
        point_labels [N] or [B, N] (1 foreground, 0 background), box [4] or [B, 4] XYXY, mask_input [1, 256, 256]
        or [B, 1, 256, 256] low-res logits of an earlier prediction.
        Returns masks [K, H, W] (float32: 0/1, or logits with return_logits, as Meta's), iou_predictions [K] and low-res logits
        [K, 256, 256] (clamped to +/-32), each with a leading B for batched prompts; K = 3 with multimask_output,
        else 1 (token 0, or the most stable multimask candidate when token 0's mask is unstable).
        """
        self._require_image()
        mask_input, unnorm_coords, labels, unnorm_box = self._prep_prompts(
            point_coords, point_labels, box, mask_input, normalize_coords
        )
        masks, iou_predictions, low_res_masks = self._predict(
            unnorm_coords, labels, unnorm_box, mask_input, multimask_output, return_logits=return_logits
        )
        return (
            masks.squeeze(0).float().cpu().numpy(),
            iou_predictions.squeeze(0).float().cpu().numpy(),
            low_res_masks.squeeze(0).float().cpu().numpy(),
        )

    def _prep_prompts(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_logits: np.ndarray | None,
        normalize_coords: bool,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        unnorm_coords, labels, unnorm_box, mask_input = None, None, None, None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            coords = torch.as_tensor(np.asarray(point_coords, dtype=np.float32), device=self.device)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)
            if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
                raise ValueError(f"point_coords must have shape [N, 2] or [B, N, 2], got {list(coords.shape)}")
            if tuple(labels.shape) != tuple(coords.shape[:-1]):
                raise ValueError(
                    f"point_labels must have shape {list(coords.shape[:-1])} to match point_coords, got {list(labels.shape)}"
                )
            unnorm_coords = self._transforms.transform_coords(
                coords, normalize=normalize_coords, orig_hw=self._orig_hw[img_idx]
            )
            if unnorm_coords.ndim == 2:
                unnorm_coords, labels = unnorm_coords[None], labels[None]
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            box_t = torch.as_tensor(np.asarray(box, dtype=np.float32), device=self.device)
            if box_t.numel() % 4 != 0 or box_t.numel() == 0 or box_t.shape[-1] != 4:
                raise ValueError(f"box must be [4] or [B, 4] (x0, y0, x1, y1), got shape {list(box_t.shape)}")
            unnorm_box = self._transforms.transform_boxes(
                box_t, normalize=normalize_coords, orig_hw=self._orig_hw[img_idx]
            )
        if mask_logits is not None:
            mask_input = torch.as_tensor(np.asarray(mask_logits, dtype=np.float32), device=self.device)
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
            size = self.model.sam_prompt_encoder.mask_input_size
            if mask_input.ndim != 4 or mask_input.shape[1] != 1 or tuple(mask_input.shape[-2:]) != tuple(size):
                raise ValueError(
                    f"mask_input must have shape [1, {size[0]}, {size[1]}] or [B, 1, {size[0]}, {size[1]}], "
                    f"got {list(mask_input.shape)}"
                )
        return mask_input, unnorm_coords, labels, unnorm_box

    @torch.no_grad()
    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the model's frame: point_coords [B, N, 2], point_labels [B, N],
        boxes [B, 2, 2] (or [B, 4]), mask_input [B, 1, 256, 256].

        Returns masks [B, K, H, W], iou_predictions [B, K], low-res logits [B, K, 256, 256].
        """
        self._require_image()
        concat_points = (point_coords, point_labels) if point_coords is not None else None
        if boxes is not None:
            # Box corners travel as points labelled 2 and 3, ahead of any clicks.
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.size(0), 1)
            if concat_points is not None:
                concat_points = (
                    torch.cat([box_coords, concat_points[0]], dim=1),
                    torch.cat([box_labels, concat_points[1]], dim=1),
                )
            else:
                concat_points = (box_coords, box_labels)

        sparse_embeddings, dense_embeddings = self.model.sam_prompt_encoder(
            points=concat_points, boxes=None, masks=mask_input
        )
        batched_mode = concat_points is not None and concat_points[0].shape[0] > 1
        high_res_features = [level[img_idx].unsqueeze(0) for level in self._features["high_res_feats"]]
        low_res_masks, iou_predictions, _, _ = self.model.sam_mask_decoder(
            image_embeddings=self._features["image_embed"][img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
            repeat_image=batched_mode,
            high_res_features=high_res_features,
        )
        masks = self._transforms.postprocess_masks(low_res_masks, self._orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res_masks

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding [1, 256, 64, 64] (no_mem_embed added)."""
        self._require_image()
        return self._features["image_embed"]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        """Forgets the current image and its features."""
        self._is_image_set = False
        self._features = None
        self._orig_hw = None
        self._is_batch = False

    def _require_image(self) -> None:
        if not self._is_image_set:
            raise RuntimeError("no image is set: call set_image(...) before predicting")
