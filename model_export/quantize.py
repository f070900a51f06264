"""Dynamic uint8 weight quantization of an exported decoder."""

import logging
from pathlib import Path

from backend.files import atomic_write


class _DropPreprocessingHint(logging.Filter):
    """quantize_dynamic logs a generic hint to run its pre-processing tool; it does not apply to these graphs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_decoder(model_path: str | Path, output: str | Path) -> Path:
    """
    Quantize the weights of the ONNX decoder at model_path to uint8 (onnxruntime quantize_dynamic, per tensor)
    and write it to output atomically. Activations stay float; MatMul and Gemm become their integer forms.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = Path(output)
    hint_filter = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        with atomic_write(output) as tmp_path:
            quantize_dynamic(
                model_input=str(model_path),
                model_output=str(tmp_path),
                per_channel=False,
                reduce_range=False,
                weight_type=QuantType.QUInt8,
            )
    finally:
        logging.getLogger().removeFilter(hint_filter)
    return output
