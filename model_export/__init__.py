"""ONNX export of SAM's prompt encoder + mask decoder: the official interface, the fast lowres one, quantization;
and SAM 2's decoder with the public SAM 2 interface (sam2_model.py)."""

from .export import VARIANTS, example_inputs, export_decoder, output_names
from .lowres_model import PER_IMAGE_OUTPUTS, SamLowResOnnxModel, per_image_inputs
from .onnx_model import SamDecoderParts, SamOnnxModel
from .quantize import QUANTIZATION_RECIPES, SESSION_CONFIG, decoder_session_options, quantize_decoder
from .sam2_model import SAM2OnnxModel, export_sam2_decoder

# Bump when a change alters the exported graphs, so cached decoder files are made anew.
EXPORTER_VERSION = "15"

__all__ = [
    "EXPORTER_VERSION",
    "PER_IMAGE_OUTPUTS",
    "QUANTIZATION_RECIPES",
    "SESSION_CONFIG",
    "SAM2OnnxModel",
    "SamDecoderParts",
    "SamLowResOnnxModel",
    "SamOnnxModel",
    "VARIANTS",
    "decoder_session_options",
    "example_inputs",
    "export_decoder",
    "export_sam2_decoder",
    "output_names",
    "per_image_inputs",
    "quantize_decoder",
]
