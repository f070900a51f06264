"""ONNX export of SAM's prompt encoder + mask decoder: the official interface, the fast lowres one, quantization."""

from .export import VARIANTS, example_inputs, export_decoder, output_names
from .lowres_model import SamLowResOnnxModel
from .onnx_model import SamDecoderParts, SamOnnxModel
from .quantize import QUANTIZATION_RECIPES, quantize_decoder

# Bump when a change alters the exported graphs, so cached decoder files are made anew.
EXPORTER_VERSION = "5"

__all__ = [
    "EXPORTER_VERSION",
    "QUANTIZATION_RECIPES",
    "SamDecoderParts",
    "SamLowResOnnxModel",
    "SamOnnxModel",
    "VARIANTS",
    "example_inputs",
    "export_decoder",
    "output_names",
    "quantize_decoder",
]
