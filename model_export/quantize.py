"""8-bit weights for an exported decoder: Meta's recipe (dynamic, per tensor) and ours (weight-only, per channel)."""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from backend.runtime.files import atomic_write

# Kept in float16 by the weight-only recipe (the rest of the weights is int8), the parts where int8 rounding
# costs the most mask IoU per byte saved (measured on vit_b random weights, docs/benchmarks.md "## Decoder"):
# the output upscaling (every pixel's features; FoldedMaskDecoder's conv1/conv2 buffers), the single-mask
# token's hypernetwork (its masks were the least stable), the other hypernetworks' last layers (each mask's
# pixel weights) and the transformer's final token-to-image attention, which makes the tokens the
# hypernetworks read. That attention's nodes have no module scope of their own in the trace (folded_decoder's
# functions), so they are named as the exporter numbers them; tests/test_quantized_decoder.py fails (size and
# mask IoU) if the numbering moves.
HALF_MARKERS = (
    "conv1_weight",
    "conv2_weight",
    "conv1_centred_weight",
    "conv2_halved_weight",
    "output_hypernetworks_mlps.0/",
    "/q_proj_2/",
    "/MatMul_17",
    "/MatMul_20",
    "/out_proj_2/",
    "output_hypernetworks_mlps.0/layers.2",
    "output_hypernetworks_mlps.1/layers.2",
    "output_hypernetworks_mlps.2/layers.2",
    "output_hypernetworks_mlps.3/layers.2",
)
# Weights smaller than this stay float32: they are a few kB in all.
MIN_QUANTIZED_ELEMENTS = 4096

# Session config entries for the weight-only files: fold their DequantizeLinear nodes at session creation
# instead of keeping them for onnxruntime's integer-kernel (QDQ) fusions, which these float graphs do not use.
# web/js/decoder/session-options.js sets the same entry for the browser.
SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def decoder_session_options(threads: int | None = None):
    """onnxruntime SessionOptions for an exported decoder, as the browser creates its session (SESSION_CONFIG),
    on `threads` intra-op threads (onnxruntime's default when None)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


# The recipes backend/services/decoders.py builds its quantized files with (keyword arguments of quantize_decoder).
QUANTIZATION_RECIPES = {
    "meta": {"weight_only": False},
    "weight-only": {"weight_only": True, "half": HALF_MARKERS},
}


class _DropPreprocessingHint(logging.Filter):
    """quantize_dynamic logs a generic hint to run its pre-processing tool; it does not apply to these graphs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_decoder(
    model_path: str | Path, output: str | Path, weight_only: bool = False, half: Iterable[str] = ()
) -> Path:
    """
    Write an 8-bit-weight copy of the ONNX decoder at model_path to output, atomically.

    weight_only=False is Meta's recipe (scripts/export_onnx_model.py): onnxruntime quantize_dynamic, uint8
    weights with one scale per tensor, activations quantized on the fly, MatMul/Gemm in integer arithmetic.
    weight_only=True stores each MatMul/Gemm weight as int8 with one scale per output channel, turned back into
    float weights when the session is created: the file is as small, while the arithmetic (and the activations)
    stay float, so only the weights' rounding reaches the masks. Weights whose name, or whose consumer's name,
    contains one of `half` are stored as float16 instead.
    """
    import onnx

    output = Path(output)
    with atomic_write(output) as tmp_path:
        if weight_only:
            model = onnx.load(str(model_path))
            quantize_weights_per_channel(model, tuple(half))
            onnx.save(model, str(tmp_path))
        else:
            _quantize_dynamic_per_tensor(model_path, str(tmp_path))
    return output


def _quantize_dynamic_per_tensor(model_path: str | Path, output: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint_filter = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        quantize_dynamic(
            model_input=str(model_path),
            model_output=output,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
        )
    finally:
        logging.getLogger().removeFilter(hint_filter)


def quantize_weights_per_channel(model, half: tuple[str, ...] = ()) -> int:
    """Store the large float32 weights of an onnx ModelProto as int8 times a per-channel scale, in place.

    Symmetric int8, one scale per output channel (the last axis of a MatMul weight, axis 0 of a Gemm weight
    with transB and of any other weight). A weight whose name, or a consumer's name, contains one of `half` is
    stored as float16. A DequantizeLinear (int8) or a Cast (float16) turns each back into float32: every input
    is a constant, so onnxruntime folds them once, when the session is created, in one step per weight (a Cast
    then a Mul held a second float32 copy of every weight until folding ended: 16 MB more at its high-water).
    onnxruntime folds a DequantizeLinear only with its QDQ fusions off (SESSION_CONFIG); a session without it
    gives the same outputs but dequantizes on every run. Returns how many weights were converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in _nodes(graph):
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    converted = []
    for init in list(graph.initializer):
        if (
            init.data_type != TensorProto.FLOAT
            or len(init.dims) < 2
            or int(np.prod(init.dims)) < MIN_QUANTIZED_ELEMENTS
        ):
            continue
        name = init.name
        users = consumers.get(name, [])
        weight = numpy_helper.to_array(init).astype(np.float32)
        graph.initializer.remove(init)
        if any(marker in name or any(marker in node.name for node, _ in users) for marker in half):
            graph.initializer.append(numpy_helper.from_array(weight.astype(np.float16), f"{name}_half"))
            converted.append(
                helper.make_node("Cast", [f"{name}_half"], [name], name=f"{name}_cast", to=TensorProto.FLOAT)
            )
            continue
        axis = 0
        for node, index in users:
            if node.op_type == "MatMul" and index == 1:
                axis = weight.ndim - 1
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.abs(weight).max(axis=reduce, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        values = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.extend(
            [
                numpy_helper.from_array(values, f"{name}_int8"),
                numpy_helper.from_array(scale.reshape(-1), f"{name}_scale"),
            ]
        )
        converted.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], name=f"{name}_dequantize", axis=axis
            )
        )
    # Prepended, so the graph stays in topological order.
    for node in reversed(converted):
        graph.node.insert(0, node)
    return len(converted)


def _nodes(graph):
    """The graph's nodes and those of its subgraphs (an If's branches read the outer graph's weights)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
