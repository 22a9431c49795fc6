"""The `eaglex.cpu` domain: graph nodes marked for libeaglex's CPU kernels, each op also an ONNX function.

Two markers use it: packed_matmul.py (float32 MatMul by a constant weight) and cpu_attention.py
(GroupQueryAttention). A marked node keeps its inputs and attributes; the model defines its op as an ONNX
function whose body is the original node, which onnxruntime inlines wherever libeaglex's kernel is not
registered (no libeaglex, another onnxruntime program, a CPU without AVX-512): those run as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import helper

DOMAIN = "eaglex.cpu"


def add_functions(model: onnx.ModelProto, functions: list[onnx.FunctionProto]) -> None:
    """Defines `functions` in the model (once each) and imports the domain (once)."""
    defined = {f.name for f in model.functions if f.domain == DOMAIN}
    model.functions.extend(f for f in functions if f.name not in defined)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))


def drop_functions(model: onnx.ModelProto, names: set[str]) -> None:
    """Removes the domain's `names` functions; the domain's import goes with its last function."""
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name in names)]
    del model.functions[:]
    model.functions.extend(kept)
    if not any(f.domain == DOMAIN for f in kept):
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def passthrough(
    op: str, domain: str, inputs: list[str], outputs: list[str], attributes: dict[str, int], opset: int
) -> onnx.FunctionProto:
    """`eaglex.cpu.op` as an ONNX function whose body is `domain.op` with the same inputs and outputs, each
    of `attributes` (name: AttributeProto type) passed through from the calling node (left out where it has
    none)."""
    body = helper.make_node(op, inputs, outputs, domain=domain)
    for name, kind in attributes.items():
        ref = onnx.AttributeProto()
        ref.name, ref.ref_attr_name, ref.type = name, name, kind
        body.attribute.append(ref)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(domain, 1)]
    return helper.make_function(DOMAIN, op, inputs, outputs, [body], imports, attributes=list(attributes))


def move_nodes(
    model: onnx.ModelProto, op: str, from_domain: str, to_domain: str, takes: Callable[[onnx.NodeProto], bool]
) -> int:
    """Moves the `op` nodes of `from_domain` that `takes` accepts into `to_domain`; returns how many."""
    moved = 0
    for node in model.graph.node:
        if node.op_type == op and node.domain == from_domain and takes(node):
            node.domain = to_domain
            moved += 1
    return moved


def mark_op(
    model: onnx.ModelProto, function: onnx.FunctionProto, takes: Callable[[onnx.NodeProto], bool]
) -> int:
    """Marks the nodes of `function`'s body op that `takes` accepts as `eaglex.cpu` nodes defined by it."""
    body = function.node[0]
    marked = move_nodes(model, body.op_type, body.domain, DOMAIN, takes)
    if marked:
        add_functions(model, [function])
    return marked


def unmark_op(model: onnx.ModelProto, op: str, domain: str) -> int:
    """The inverse of mark_op: the `eaglex.cpu` `op` nodes back in `domain`, their function gone."""
    unmarked = move_nodes(model, op, DOMAIN, domain, lambda node: True)
    if unmarked:
        drop_functions(model, {op})
    return unmarked


def rewrite(path: Path, *changes: Callable[[onnx.ModelProto], int]) -> int:
    """Applies markers (or unmarkers) to the graph at `path` in place; its weights file is left as it is."""
    model = onnx.load(str(path), load_external_data=False)
    count = sum(change(model) for change in changes)
    if count:
        onnx.save(model, str(path))
    return count
