"""Segment Anything in PyTorch, with the reference implementation's public names."""

from .automatic import SamAutomaticMaskGenerator
from .build import (
    MODEL_TYPES,
    CheckpointError,
    UnknownModelTypeError,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    default_device,
    sam_model_registry,
)
from .predictor import SamPredictor
from .sam import Sam, default_precision
from .transforms import ResizeLongestSide

__all__ = [
    "MODEL_TYPES",
    "CheckpointError",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "UnknownModelTypeError",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "default_device",
    "default_precision",
    "sam_model_registry",
]
