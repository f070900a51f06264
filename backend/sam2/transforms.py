"""SAM 2's pre- and post-processing: stretch to a square (no padding), ImageNet normalisation in [0, 1] units,
prompt coordinates scaled per axis, masks resized straight back to the image."""

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SAM2Transforms:
    """Meta's SAM2Transforms without torchvision: ToTensor, Resize((resolution, resolution)) (bilinear with
    antialiasing, as torchvision does on tensors) and Normalize, then coordinate and mask transforms."""

    def __init__(
        self, resolution: int, mask_threshold: float, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0
    ) -> None:
        self.resolution = resolution
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> normalised [3, resolution, resolution] float32."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
        return self.transform_tensor(x[None])[0]

    def transform_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] float in [0, 1] -> resized and normalised [B, 3, resolution, resolution]."""
        size = (self.resolution, self.resolution)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward_batch(self, img_list: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([self(img) for img in img_list], dim=0)

    def transform_coords(
        self, coords: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """[..., 2] (x, y) -> the model's frame (0..resolution). normalize: coords are pixels of an orig_hw image
        (else they are already in [0, 1])."""
        if normalize:
            if orig_hw is None:
                raise ValueError("orig_hw is needed to normalize pixel coordinates")
            height, width = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / width
            coords[..., 1] = coords[..., 1] / height
        return coords * self.resolution

    def transform_boxes(
        self, boxes: torch.Tensor, normalize: bool = False, orig_hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """[B, 4] XYXY -> corners [B, 2, 2] in the model's frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits [B, K, h, w] -> [B, K, H, W] logits of the original image (bilinear), after filling
        holes up to max_hole_area and removing sprinkles up to max_sprinkle_area (8-connected, in low-res)."""
        masks = masks.float()
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            masks = self._fill_holes_and_sprinkles(masks)
        return F.interpolate(masks, tuple(int(s) for s in orig_hw), mode="bilinear", align_corners=False)

    def _fill_holes_and_sprinkles(self, masks: torch.Tensor) -> torch.Tensor:
        """Both region kinds are found on the masks as given (as Meta's): 8-connected background regions of at
        most max_hole_area pixels become foreground (threshold + 10), foreground regions of at most
        max_sprinkle_area pixels background (threshold - 10)."""
        out = masks.clone()
        for plane in out.view(-1, *out.shape[-2:]):
            foreground = (plane > self.mask_threshold).cpu().numpy()
            if self.max_hole_area > 0:
                holes = torch.from_numpy(_small_regions(~foreground, self.max_hole_area)).to(plane.device)
                plane[holes] = self.mask_threshold + 10.0
            if self.max_sprinkle_area > 0:
                sprinkles = torch.from_numpy(_small_regions(foreground, self.max_sprinkle_area)).to(plane.device)
                plane[sprinkles] = self.mask_threshold - 10.0
        return out


def _small_regions(mask: np.ndarray, max_area: float) -> np.ndarray:
    """The pixels of the 8-connected regions of a bool mask [H, W] with at most max_area pixels."""
    # Imported here so that only hole filling needs scipy (as remove_small_regions).
    from scipy import ndimage

    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    small = sizes <= max_area
    small[0] = False
    return small[regions]
