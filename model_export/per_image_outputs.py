"""Makes outputs that depend on the image alone computed once per image: the next runs feed them back.

The lowres graph returns its first block's image-side projections (FoldedMaskDecoder.first_block_products,
three [1, heads, ., 4096] tensors) as outputs. After this rewrite each output NAME has a graph input
CACHED_PREFIX + NAME: given (that output of a previous run on this image, without a mask input), the graph uses
it; empty (first dimension 0), or when any prompt has a mask input (the image rows are then that prompt's own),
the graph computes it, behind an ONNX If.
So a client runs the 403 M multiply-adds of those projections once per image instead of once per decode.

The nodes that read the projections are in both branches of the If, so on a run with given projections nothing
holds a second copy of them: an If's outputs are its own buffers, and a branch that handed the inputs on would
copy them (3 x 2 MB) and keep the copies alive as graph outputs to the end of the run. That branch reads the
inputs where they are and returns the outputs NAME empty; the client keeps the first run's.
"""

from __future__ import annotations

# The value telling whether a mask prompt changes the image rows (mask_branch.py's If condition).
MASK_CONDITION = "has_a_mask_input"
CACHED_PREFIX = "cached_"


def compute_once_per_image(model, names: list[str]) -> None:
    """Rewrite an onnx ModelProto in place (see the module docstring); `names` are graph outputs that depend on
    the image and the mask input only. Needs mask_branch.skip_mask_branch_without_mask applied first.
    Raises ValueError when the graph does not have that shape (nothing is changed then)."""
    from onnx import TensorProto, helper

    graph = model.graph
    outputs = {out.name: out for out in graph.output}
    if missing := [name for name in names if name not in outputs]:
        raise ValueError(f"no graph outputs {missing}")
    values = {out for node in graph.node for out in node.output}
    if MASK_CONDITION not in values:
        raise ValueError(f"no {MASK_CONDITION} in the graph: rewrite its mask branch first")
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in _reads(node):
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}

    # Every node the outputs depend on, then only those whose values nothing else reads.
    branch: dict[int, object] = {}
    pending = list(names)
    while pending:
        node = producers.get(pending.pop())
        if node is not None and id(node) not in branch:
            branch[id(node)] = node
            pending.extend(_reads(node))
    wanted = set(names)
    changed = True
    while changed:
        changed = False
        for key, node in list(branch.items()):
            # (The wanted outputs' readers will read the If's outputs.)
            kept_outputs = [out for out in node.output if out not in wanted]
            read_outside = any(out in outputs for out in kept_outputs) or any(
                id(user) not in branch for out in kept_outputs for user in consumers.get(out, [])
            )
            if read_outside:
                del branch[key]
                changed = True
    inputs = {i.name for i in graph.input}
    reads = {name for node in branch.values() for name in _reads(node)}
    if not (reads & inputs) <= {"image_embeddings", "mask_input", "has_mask_input"}:
        raise ValueError(f"the per-image outputs depend on the prompts: {sorted(reads & inputs)}")

    order = {id(node): i for i, node in enumerate(graph.node)}
    moved = sorted(branch.values(), key=lambda node: order[id(node)])
    # The projections' readers, and every node on a path from one reader to another (the first block's token
    # side), run in each branch on that branch's projections.
    direct = [node for node in graph.node if id(node) not in branch and set(_reads(node)) & wanted]
    downstream = _reached(direct, lambda node: [u for out in node.output for u in consumers.get(out, [])])
    upstream = _reached(direct, lambda node: [producers[i] for i in _reads(node) if i in producers])
    readers = [node for node in graph.node if id(node) in downstream and id(node) in upstream]
    inside = {id(node) for node in readers}
    made_by_readers = {out for node in readers for out in node.output}
    read = [  # what the rest of the graph reads of them
        out
        for node in readers
        for out in node.output
        if out in outputs or any(id(user) not in inside for user in consumers.get(out, []))
    ]
    types = {**_element_types(model, read), **dict.fromkeys(names, TensorProto.FLOAT)}
    for node in moved:
        node.output[:] = [f"{out}/computed" if out in wanted else out for out in node.output]

    def in_branch(value: str, source: str) -> str:
        """What a reader's copy in the `source` ("computed" | "given") branch reads for `value`."""
        if value in wanted:
            return f"{value}/computed" if source == "computed" else CACHED_PREFIX + value
        return f"{value}/{source}" if value in made_by_readers else value

    def readers_of(source: str) -> list:
        copies = []
        for node in readers:
            copy = type(node)()
            copy.CopyFrom(node)
            copy.name = f"{node.name}/{source}"
            copy.input[:] = [in_branch(value, source) for value in node.input]
            copy.output[:] = [f"{out}/{source}" for out in node.output]
            copies.append(copy)
        return copies

    def branch_outputs(source: str) -> list:
        """The `source` branch's outputs, in the If's order: what the graph reads of the readers, then `names`."""
        return [helper.make_tensor_value_info(f"{out}/{source}", types[out], None) for out in read + names]

    given = readers_of("given") + [
        helper.make_node(
            "Constant", [], [f"{name}/given"], value=helper.make_tensor("e", TensorProto.FLOAT, [0, 0, 0, 0], [])
        )
        for name in names
    ]
    for name in names:
        graph.input.append(helper.make_tensor_value_info(CACHED_PREFIX + name, TensorProto.FLOAT, None))
    first = CACHED_PREFIX + names[0]
    conditions = [
        helper.make_node("Size", [first], ["per_image/size"], name="per_image/Size"),
        helper.make_node("Constant", [], ["per_image/zero"], value=helper.make_tensor("z", TensorProto.INT64, [], [0])),
        helper.make_node("Equal", ["per_image/size", "per_image/zero"], ["per_image/absent"], name="per_image/Equal"),
        helper.make_node("Or", ["per_image/absent", MASK_CONDITION], ["per_image/compute"], name="per_image/Or"),
        helper.make_node(
            "If",
            ["per_image/compute"],
            read + names,
            name="per_image/If",
            then_branch=helper.make_graph(
                moved + readers_of("computed"), "compute_per_image", [], branch_outputs("computed")
            ),
            else_branch=helper.make_graph(given, "given_per_image", [], branch_outputs("given")),
        ),
    ]
    moved_away = inside | set(branch)
    kept = [node for node in graph.node if id(node) not in moved_away]
    del graph.node[:]
    graph.node.extend(_topological(kept + conditions))
    for name in names:
        outputs[name].type.tensor_type.ClearField("shape")


def _reached(start: list, neighbours) -> set[int]:
    """The ids of the nodes in `start` and of every node reached from them through `neighbours(node)`."""
    seen = {id(node) for node in start}
    pending = list(start)
    while pending:
        for node in neighbours(pending.pop()):
            if id(node) not in seen:
                seen.add(id(node))
                pending.append(node)
    return seen


def _element_types(model, names: list[str]) -> dict[str, int]:
    """The ONNX element type of each value in `names`, by onnx's shape inference (on a copy of `model`)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    known = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.output]}
    if missing := [name for name in names if not known.get(name)]:
        raise ValueError(f"no element type inferred for {missing}")
    return {name: known[name] for name in names}


def _reads(node) -> list[str]:
    """The values a node reads: its inputs and, for If/Loop/Scan, what its subgraphs read from outside them."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        if attribute.HasField("g"):
            inner = attribute.g
            made = {out for n in inner.node for out in n.output} | {i.name for i in inner.initializer}
            names += [name for n in inner.node for name in _reads(n) if name not in made]
    return names


def _topological(nodes: list) -> list:
    """nodes in an order where each comes after the nodes whose values it reads (else in the given order)."""
    import heapq

    made = {out: i for i, node in enumerate(nodes) for out in node.output}
    needs = [{made[name] for name in _reads(node) if name in made} - {i} for i, node in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for dep in deps:
            users.setdefault(dep, []).append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for user in users.get(i, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(ordered) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return ordered
