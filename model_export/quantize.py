"""Dynamic uint8 weight quantization of an exported decoder."""

import logging
import os
import tempfile
from pathlib import Path


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
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the files are served to browsers.
    hint_filter = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        quantize_dynamic(
            model_input=str(model_path),
            model_output=tmp_name,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
        )
        os.replace(tmp_name, output)
    finally:
        logging.getLogger().removeFilter(hint_filter)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return output
