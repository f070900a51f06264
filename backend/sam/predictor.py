"""SamPredictor: encode an image once, then predict masks for any number of prompts."""

from typing import Any

import numpy as np
import torch

from .sam import Sam
from .transforms import ResizeLongestSide


def check_image(image: Any) -> np.ndarray:
    """Raises a plain TypeError/ValueError unless ``image`` is a non-empty HxWx3 uint8 array; returns it."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (HxWx3 uint8), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape HxWx3, got {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    return image


class SamPredictor:
    def __init__(self, sam_model: Sam, precision: str | None = None) -> None:
        """Wraps `sam_model`. precision: None keeps the model's setting (exact fp32 unless changed); "auto",
        "fp32", "bf16" or "fp16" calls `sam_model.set_precision` (see Sam.set_precision)."""
        super().__init__()
        self.model = sam_model
        if precision is not None:
            self.model.set_precision(precision)
        self.transform = ResizeLongestSide(sam_model.image_size)
        self.reset_image()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encodes an HxWx3 uint8 image (RGB or BGR, see image_format) and keeps its embedding."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_image(image)
        if image_format != self.model.image_format:
            image = image[..., ::-1]

        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        input_image_torch = torch.as_tensor(input_image, device=self.device)
        input_image_torch = input_image_torch.permute(2, 0, 1).contiguous()[None, :, :, :]
        self.set_torch_image(input_image_torch, image.shape[:2])

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encodes an already resized [1, 3, h, w] image (longest side = image size); original_image_size (H, W)."""
        size = self.model.image_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[0] != 1
            or transformed_image.shape[1] != 3
            or max(*transformed_image.shape[2:]) != size
        ):
            raise ValueError(
                f"set_torch_image expects [1, 3, h, w] with longest side {size}, got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        input_image = self.model.preprocess(transformed_image.float())
        self.features = self.model.image_encoder(input_image)
        self.is_image_set = True

    def set_embedding(
        self,
        embedding: np.ndarray | torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """Uses a cached image embedding ([1, 256, 64, 64] or [256, 64, 64]) instead of encoding again.

        original_size is the (H, W) of the image it came from; input_size defaults to its resized size.
        """
        features = torch.as_tensor(np.asarray(embedding) if not torch.is_tensor(embedding) else embedding)
        if features.ndim == 3:
            features = features[None]
        grid = self.model.prompt_encoder.image_embedding_size
        expected = (1, self.model.prompt_encoder.embed_dim, grid[0], grid[1])
        if tuple(features.shape) != expected:
            raise ValueError(f"embedding must have shape {list(expected)}, got {list(features.shape)}")
        if len(original_size) != 2 or min(original_size) < 1:
            raise ValueError(f"original_size must be (height, width) > 0, got {tuple(original_size)}")
        if input_size is None:
            input_size = self.transform.get_preprocess_shape(original_size[0], original_size[1], self.model.image_size)
        self.reset_image()
        self.features = features.to(device=self.device, dtype=torch.float32)
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the current image.

        point_coords [N, 2] (x, y in original pixels), point_labels [N] (1 fg, 0 bg), box [4] (x0, y0, x1, y1),
        mask_input [1, 256, 256] low-res logits of an earlier prediction.
        Returns masks [K, H, W] (bool, or float logits with return_logits), iou_predictions [K] and
        low_res_logits [K, 256, 256]; K = 3 with multimask_output else 1.
        """
        self._require_image()
        coords_torch, labels_torch, box_torch, mask_input_torch = None, None, None, None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            point_coords = np.asarray(point_coords, dtype=np.float64)
            point_labels = np.asarray(point_labels)
            if point_coords.ndim != 2 or point_coords.shape[1] != 2:
                raise ValueError(f"point_coords must have shape [N, 2], got {list(point_coords.shape)}")
            if point_labels.shape != (point_coords.shape[0],):
                raise ValueError(
                    f"point_labels must have shape [{point_coords.shape[0]}] to match point_coords, got {list(point_labels.shape)}"
                )
            point_coords = self.transform.apply_coords(point_coords, self.original_size)
            coords_torch = torch.as_tensor(point_coords, dtype=torch.float, device=self.device)[None, :, :]
            labels_torch = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None, :]
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            box = np.asarray(box, dtype=np.float64)
            if box.size != 4:
                raise ValueError(f"box must hold 4 numbers (x0, y0, x1, y1), got shape {list(box.shape)}")
            box = self.transform.apply_boxes(box.reshape(1, 4), self.original_size)
            box_torch = torch.as_tensor(box, dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            mask_size = self.model.prompt_encoder.mask_input_size
            if mask_input.shape != (1, *mask_size):
                raise ValueError(
                    f"mask_input must have shape [1, {mask_size[0]}, {mask_size[1]}], got {list(mask_input.shape)}"
                )
            mask_input_torch = torch.as_tensor(mask_input, device=self.device)[None, :, :, :]

        masks, iou_predictions, low_res_masks = self.predict_torch(
            coords_torch,
            labels_torch,
            box_torch,
            mask_input_torch,
            multimask_output,
            return_logits=return_logits,
        )
        return masks[0].cpu().numpy(), iou_predictions[0].cpu().numpy(), low_res_masks[0].cpu().numpy()

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame (apply ResizeLongestSide first).

        point_coords [B, N, 2], point_labels [B, N], boxes [B, 4], mask_input [B, 1, 256, 256].
        Returns masks [B, K, H, W], iou_predictions [B, K], low_res_logits [B, K, 256, 256].
        """
        self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse_embeddings, dense_embeddings = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res_masks, iou_predictions = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
        )
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou_predictions, low_res_masks

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding [1, 256, 64, 64]."""
        self._require_image()
        return self.features

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forgets the current image and its embedding."""
        self.is_image_set = False
        self.features = None
        self.orig_h = None
        self.orig_w = None
        self.input_h = None
        self.input_w = None
        self.original_size = None
        self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(...) or set_embedding(...) before predicting")
