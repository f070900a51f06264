"""Puts the mask prompt's branch of an exported decoder behind an ONNX If, so a decode without one skips it.

The traced graph computes dense = has_mask_input * mask_downscaling(mask_input) + (1 - has_mask_input) *
no_mask_embed on every run: two strided convolutions, two layer norms and a 1x1 convolution to 256 x 64 x 64,
then a blend, for a mask that is absent on almost every decode (hovers and clicks; only refinement sends one).
After the rewrite that computation is the If's then-branch, taken when any has_mask_input != 0; the else-branch
is the no-mask embedding itself, [1, C, 1, 1], which the blend equals exactly at has_mask_input == 0 and
which the following Add broadcasts over the image. Outputs are unchanged for every input.
"""

from __future__ import annotations

import numpy as np


def skip_mask_branch_without_mask(
    model, no_mask_embedding: np.ndarray, embedding_input: str = "image_embeddings"
) -> None:
    """Rewrite an onnx ModelProto in place (see the module docstring).

    The branch is found by its anchor, the Add of the embedding_input (SAM 2: ``image_embed``) and the dense
    embedding: every node the dense embedding depends on moves into the then-branch. no_mask_embedding:
    [1, C, 1, 1] float32.
    Raises ValueError when the graph does not have that shape (nothing is changed then).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    anchor = next(
        (n for n in graph.node if n.op_type == "Add" and embedding_input in n.input),
        None,
    )
    if anchor is None:
        raise ValueError(f"no Add of {embedding_input} and the dense embedding in this graph")
    dense = next(name for name in anchor.input if name != embedding_input)

    branch: list = []
    pending = [dense]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue  # a graph input or an initializer: read from the outer scope
        seen.add(id(node))
        branch.append(node)
        pending.extend(node.input)
    inputs_used = {name for node in branch for name in node.input}
    graph_inputs = {i.name for i in graph.input}
    if not (inputs_used & graph_inputs) <= {"mask_input", "has_mask_input"}:
        raise ValueError(f"the dense embedding depends on {sorted(inputs_used & graph_inputs)}, not only on the mask")
    branch_outputs = {out for node in branch for out in node.output}
    for node in graph.node:
        if id(node) not in seen and node is not anchor and branch_outputs & set(node.input):
            raise ValueError(f"node {node.name} outside the mask branch reads its intermediate values")
    if any(out.name in branch_outputs for out in graph.output):
        raise ValueError("a graph output is computed inside the mask branch")

    order = {id(node): i for i, node in enumerate(graph.node)}
    branch.sort(key=lambda node: order[id(node)])
    dense_type = helper.make_tensor_value_info(dense, TensorProto.FLOAT, None)
    then_branch = helper.make_graph(branch, "with_mask_input", [], [dense_type])
    constant = numpy_helper.from_array(no_mask_embedding.astype(np.float32), "no_mask_embedding")
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], [f"{dense}_no_mask"], value=constant)],
        "without_mask_input",
        [],
        [helper.make_tensor_value_info(f"{dense}_no_mask", TensorProto.FLOAT, None)],
    )
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "has_mask_input_zero")
    graph.initializer.append(zero)
    condition = [
        # One flag per prompt: the branch runs when any prompt has a mask.
        helper.make_node(
            "ReduceMax", ["has_mask_input"], ["max_has_mask_input"], name="mask_branch/ReduceMax", keepdims=0
        ),
        helper.make_node("Equal", ["max_has_mask_input", zero.name], ["has_no_mask_input"], name="mask_branch/Equal"),
        helper.make_node("Not", ["has_no_mask_input"], ["has_a_mask_input"], name="mask_branch/Not"),
        helper.make_node(
            "If", ["has_a_mask_input"], [dense], name="mask_branch/If", then_branch=then_branch, else_branch=else_branch
        ),
    ]
    kept = [node for node in graph.node if id(node) not in seen]
    at = kept.index(anchor)
    del graph.node[:]
    graph.node.extend(kept[:at] + condition + kept[at:])
