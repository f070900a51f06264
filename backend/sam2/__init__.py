"""SAM 2 / SAM 2.1 for images in PyTorch, with the reference implementation's public names."""

from .automatic_mask_generator import SAM2AutomaticMaskGenerator
from .build_sam import MODEL_FILES, MODEL_TYPES, build_sam2, model_config
from .sam2_base import SAM2Base
from .sam2_image_predictor import SAM2ImagePredictor

__all__ = [
    "MODEL_FILES",
    "MODEL_TYPES",
    "SAM2AutomaticMaskGenerator",
    "SAM2Base",
    "SAM2ImagePredictor",
    "build_sam2",
    "model_config",
]
