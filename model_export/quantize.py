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
# The attention products between the prompt's tokens and the image rows in SAM's lowres graph (block 2's
# token-to-image and image-to-token attentions, the final token-to-image attention): the largest products of a
# decode whose operands are both computed per run, so there are no weights to store in 8 bits. The weight-only
# recipe for that graph runs them in integer arithmetic, each prompt's operands quantized per run to uint8 with
# a scale of their own (DynamicQuantizeLinear, com.microsoft's MatMulIntegerToFloat). onnxruntime-web's int8
# kernel does twice the multiply-adds of its float one per instruction, and the masks stay within the bound
# (docs/benchmarks.md, exporter versions 11 and 12); in the upscaling, int8 rounding cost 0.005 mean IoU and
# stays float. Named as the exporter numbers them, like the markers above: integer_products raises if one is
# missing.
INTEGER_PRODUCTS = ("/MatMul_8", "/MatMul_10", "/MatMul_11", "/MatMul_15", "/MatMul_17", "/MatMul_19", "/MatMul_20")
# Of those, the ones whose first operand, a transposed copy (block 1's image-to-token attention weights,
# [56, 4096] read as [4096, 56]), is transposed in float32 before quantizing rather than in uint8 after:
# onnxruntime-web's float32 Transpose is the faster. Block 2's (/MatMul_17) stays uint8: in float32 too, the
# page's largest decode (a mask prompt over all 64 x 64 tokens) took the decoder's WebAssembly memory over
# Emscripten's next growth step, 72.5 -> 87.1 MB (tests/decoder_heap.mjs; docs/benchmarks.md, exporter
# version 13).
FLOAT_TRANSPOSED_PRODUCTS = ("/MatMul_8",)
# The same products in SAM 2's lowres graph (model_export/sam2_lowres_model.py), numbered as its exporter does:
# block 1's and 2's token-to-image logits and outputs, block 2's image-to-token logits and the final
# token-to-image attention. They are [64, 256] x [256, 4096] and the like, with no prompt axis (that graph
# decodes one prompt a run), so each is quantized as it is. Mean IoU against SAM 2's predictor unchanged to four
# places (0.9932 0.9944 0.9946, seeded random sam2.1_hiera_t, 40 clicks); the run 1.18-1.31x shorter in Node
# (docs/benchmarks.md, exporter version 14).
SAM2_INTEGER_PRODUCTS = tuple(f"/decoder/MatMul_{index}" for index in (1, 2, 6, 9, 10, 14, 17, 18))
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
    "weight-only-integer-attention": {
        "weight_only": True,
        "half": HALF_MARKERS,
        "integer": INTEGER_PRODUCTS,
        "float_transposed": FLOAT_TRANSPOSED_PRODUCTS,
    },
    "weight-only-integer-attention-sam2": {
        "weight_only": True,
        "half": HALF_MARKERS,
        "integer": SAM2_INTEGER_PRODUCTS,
        "prompt_axis": False,
    },
}


class _DropPreprocessingHint(logging.Filter):
    """quantize_dynamic logs a generic hint to run its pre-processing tool; it does not apply to these graphs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_decoder(
    model_path: str | Path,
    output: str | Path,
    weight_only: bool = False,
    half: Iterable[str] = (),
    integer: Iterable[str] = (),
    float_transposed: Iterable[str] = (),
    prompt_axis: bool = True,
) -> Path:
    """
    Write an 8-bit-weight copy of the ONNX decoder at model_path to output, atomically.

    weight_only=False is Meta's recipe (scripts/export_onnx_model.py): onnxruntime quantize_dynamic, uint8
    weights with one scale per tensor, activations quantized on the fly, MatMul/Gemm in integer arithmetic.
    weight_only=True stores each MatMul/Gemm weight as int8 with one scale per output channel, turned back into
    float weights when the session is created: the file is as small, while the arithmetic (and the activations)
    stay float, so only the weights' rounding reaches the masks. Weights whose name, or whose consumer's name,
    contains one of `half` are stored as float16 instead. The MatMul nodes named in `integer` (products of two
    computed operands) run in integer arithmetic (integer_products; `float_transposed` and `prompt_axis` as
    there).
    """
    import onnx

    output = Path(output)
    with atomic_write(output) as tmp_path:
        if weight_only:
            model = onnx.load(str(model_path))
            quantize_weights_per_channel(model, tuple(half))
            integer_products(model, tuple(integer), tuple(float_transposed), prompt_axis)
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


def integer_products(
    model, names: tuple[str, ...], float_transposed: tuple[str, ...] = (), prompt_axis: bool = True
) -> int:
    """Run the main graph's MatMul nodes `names`, each a product of two operands [prompts, rows, columns]
    computed per run, in integer arithmetic, in place: each prompt's operands are quantized per run to uint8 with
    their own scale and zero point (DynamicQuantizeLinear) and com.microsoft's MatMulIntegerToFloat multiplies
    them and scales the int32 sums back to float32 (_integer_product_by_prompt_count). With prompt_axis=False the
    operands are [rows, columns] of the run's one prompt and are quantized as they are. An operand that is a
    transposed copy is read from its source (_integer_product places the transpose; in float32 for the first
    operands of the products named in `float_transposed`). Raises ValueError if a name is not a MatMul of two
    computed operands (the exporter's numbering moved). Returns how many were converted."""
    from onnx import helper, numpy_helper

    graph = model.graph
    if not names:
        return 0
    producers = {output: node for node in graph.node for output in node.output}
    constants = {init.name for init in graph.initializer}
    targets = {node.name: node for node in graph.node if node.name in names and node.op_type == "MatMul"}

    def computed(name: str) -> bool:
        source = producers.get(name)
        return (
            name not in constants
            and source is not None
            and source.op_type not in ("Constant", "DequantizeLinear", "Cast")
        )

    wrong = [name for name in names if name not in targets or not all(map(computed, targets[name].input))]
    if wrong:
        raise ValueError(f"integer products {wrong} are not MatMuls of two computed operands in this graph")
    nodes = []
    for node in graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        # An operand that is a transposed copy is read from its source: _integer_product places the transpose.
        sources, perms = [], []
        for operand in node.input:
            source = producers[operand]
            if source.op_type == "Transpose":
                sources.append(source.input[0])
                perms.append(list(next(a for a in source.attribute if a.name == "perm").ints))
            else:
                sources.append(operand)
                perms.append(None)
        float_first = node.name in float_transposed
        if prompt_axis:
            nodes += _integer_product_by_prompt_count(node.name, sources, perms, node.output[0], float_first)
        else:
            nodes += _integer_product(sources, perms, node.name, node.output[0], float_first)
    del graph.node[:]
    graph.node.extend(_without_unread(nodes, graph))
    if prompt_axis:
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), _ONE_PROMPT))
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(targets)


def _integer_product_by_prompt_count(name: str, sources: list, perms: list, output: str, float_first: bool) -> list:
    """Nodes that make `output`, the product of the operands `sources` [prompts, rows, columns] (each transposed
    by its perm when not None), in integer arithmetic with one scale per prompt and operand, so that a prompt's
    masks do not depend on the others in its run. One prompt (a hover, a click) multiplies the operands as they
    are; several go through a Scan over the prompt axis. Both give one prompt the same bits; the Scan alone
    would hold 14.5 MB more WebAssembly memory in every run (docs/benchmarks.md, exporter versions 11 and 12)."""
    from onnx import TensorProto, helper

    one = _integer_product(sources, perms, f"{name}_one", f"{name}_one", float_first)
    inputs = [helper.make_tensor_value_info(f"{name}_operand_{i}", TensorProto.FLOAT, None) for i in range(2)]
    per_prompt = [None if perm is None else [axis - 1 for axis in perm[1:]] for perm in perms]
    body = _integer_product([i.name for i in inputs], per_prompt, f"{name}_each", f"{name}_each", float_first)
    looped = helper.make_node(
        "Scan",
        sources,
        [f"{name}_looped"],
        num_scan_inputs=2,
        body=helper.make_graph(body, f"{name}_each", inputs, [_float_info(f"{name}_each")]),
    )
    prompts, single = f"{name}_prompts", f"{name}_single_prompt"
    return [
        helper.make_node("Shape", [sources[0]], [prompts], start=0, end=1),
        helper.make_node("Equal", [prompts, _ONE_PROMPT], [single]),
        helper.make_node(
            "If",
            [single],
            [output],
            name=f"{name}_integer",
            then_branch=helper.make_graph(one, f"{name}_one_prompt", [], [_float_info(f"{name}_one")]),
            else_branch=helper.make_graph([looped], f"{name}_prompts", [], [_float_info(f"{name}_looped")]),
        ),
    ]


_ONE_PROMPT = "integer_products_one_prompt"


def _float_info(name: str):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _integer_product(operands: list, perms: list, prefix: str, output: str, float_first: bool) -> list:
    """Nodes that multiply the two operands (each its source transposed by its perm when not None) into `output`
    in integer arithmetic: each operand quantized to uint8 (DynamicQuantizeLinear), com.microsoft's
    MatMulIntegerToFloat multiplying them. A product whose second operand is a transposed [rows, columns] source
    (the image rows, [4096, 256]) is computed as (source · first operandᵀ)ᵀ: the large source is read as it is
    laid out, and only the small first operand and the [4096, 56] product are transposed, in float32. A
    transposed first operand is transposed in float32 before quantizing when `float_first`, else in uint8 after.
    onnxruntime-web has no integer kernel for transposed operands, and its float32 Transpose was the faster
    (docs/benchmarks.md, exporter version 13). The integer sums are the same every way."""
    from onnx import helper

    nodes = []

    def transposed(name: str, perm: list | None, index: int) -> str:
        if perm is None or perm == sorted(perm):
            return name
        nodes.append(helper.make_node("Transpose", [name], [f"{prefix}_{index}_transposed"], perm=perm))
        return f"{prefix}_{index}_transposed"

    (a, b), (a_perm, b_perm) = operands, perms
    swap = None if b_perm is None else [*range(len(b_perm) - 2), len(b_perm) - 1, len(b_perm) - 2]
    uint8_perms = [None, None]
    if b_perm is not None and b_perm == swap:
        # a · bᵀ = (b · aᵀ)ᵀ; aᵀ composes a's own perm with the swap.
        first, second = b, transposed(a, swap if a_perm is None else [a_perm[axis] for axis in swap], 1)
        product = f"{prefix}_transposed_product"
    elif float_first:
        first, second, product = transposed(a, a_perm, 0), transposed(b, b_perm, 1), output
    else:
        (first, second), uint8_perms, product = (a, b), [a_perm, b_perm], output
    quantized = []
    for index, operand in enumerate((first, second)):
        values, scale, zero = (f"{prefix}_{index}_{part}" for part in ("uint8", "scale", "zero_point"))
        nodes.append(helper.make_node("DynamicQuantizeLinear", [operand], [values, scale, zero]))
        quantized.append((transposed(values, uint8_perms[index], index), scale, zero))
    (a_values, a_scale, a_zero), (b_values, b_scale, b_zero) = quantized
    nodes.append(
        helper.make_node(
            "MatMulIntegerToFloat",
            [a_values, b_values, a_scale, b_scale, a_zero, b_zero],
            [product],
            domain="com.microsoft",
        )
    )
    if product != output:
        nodes.append(helper.make_node("Transpose", [product], [output], perm=swap))
    return nodes


def _without_unread(nodes: list, graph) -> list:
    """nodes less those whose outputs nothing reads (the float Transposes the integer products replaced)."""
    while True:
        read = {name for node in nodes for name in _inputs(node)} | {output.name for output in graph.output}
        kept = [node for node in nodes if any(output in read for output in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _inputs(node):
    """A node's inputs, and those its subgraphs read from the outer graph (by name; a subgraph's own names are
    distinct from the outer graph's)."""
    yield from node.input
    for attribute in node.attribute:
        if attribute.HasField("g"):
            for inner in _nodes(attribute.g):
                yield from inner.input


def _nodes(graph):
    """The graph's nodes and those of its subgraphs (an If's branches read the outer graph's weights)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
