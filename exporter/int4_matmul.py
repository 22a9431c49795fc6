"""4-bit MatMulNBits with float32 activations marked for libeaglex's few-row kernel, onnxruntime's as the
fallback.

onnxruntime's MatMulNBits with float32 activations (accuracy_level 0 or 1, eaglex's lossless int4) reads
the 4-bit weights as they are for one row, but dequantizes every weight into a float buffer first for two
rows or more: an int4 SmolLM2 target pass costs 3x at two rows what it costs at one, so no draft tree pays.
libeaglex's `eaglex.cpu.MatMulNBits` (native/src/int4_matmul.cpp) repacks the weights at load and unpacks
each pair of k's once for all of a pass's rows, each row's result independent of the others.

Each node with symmetric 4-bit blocks (no zero points, no group index, no bias), float32 activations, N a
multiple of 16 and constant weights and scales becomes `eaglex.cpu.MatMulNBits` with the same inputs and
attributes; the model defines that op as an ONNX function whose body is onnxruntime's node
(exporter/cpu_ops.py). Nodes with int8 activations (accuracy_level 4) stay onnxruntime's.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .cpu_ops import DOMAIN, add_functions, default_opset, drop_functions

OP, ORT_DOMAIN = "MatMulNBits", "com.microsoft"
INPUTS, OUTPUTS = ["A", "B", "scales"], ["Y"]
ATTRIBUTES = ["K", "N", "bits", "block_size", "accuracy_level"]


def _function(opset: int) -> onnx.FunctionProto:
    body = helper.make_node(OP, INPUTS, OUTPUTS, domain=ORT_DOMAIN)
    for name in ATTRIBUTES:  # each passed through from the calling node (left out where it has none)
        ref = onnx.AttributeProto()
        ref.name, ref.ref_attr_name, ref.type = name, name, onnx.AttributeProto.INT
        body.attribute.append(ref)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(ORT_DOMAIN, 1)]
    return helper.make_function(DOMAIN, OP, INPUTS, OUTPUTS, [body], imports, attributes=ATTRIBUTES)


def _supported(node: onnx.NodeProto, constants: set[str]) -> bool:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    block = attributes.get("block_size", 0)
    return (
        len(node.input) == 3
        and set(node.input[1:]) <= constants
        and set(attributes) <= set(ATTRIBUTES)
        and attributes.get("bits") == 4
        and attributes.get("accuracy_level", 0) in (0, 1)  # float32 activations
        and block > 0
        and block % 2 == 0
        and attributes.get("K", 1) % block == 0
        and attributes.get("N", 1) % 16 == 0
    )


def mark(model: onnx.ModelProto) -> int:
    """Marks every MatMulNBits node the kernel takes (above); returns how many."""
    constants = {t.name for t in model.graph.initializer}
    marked = 0
    for node in model.graph.node:
        if node.op_type == OP and node.domain == ORT_DOMAIN and _supported(node, constants):
            node.domain = DOMAIN
            marked += 1
    if marked:
        add_functions(model, [_function(default_opset(model))])
    return marked


def unmark(model: onnx.ModelProto) -> int:
    """The inverse of mark: onnxruntime's MatMulNBits nodes again."""
    unmarked = 0
    for node in model.graph.node:
        if node.op_type == OP and node.domain == DOMAIN:
            node.domain = ORT_DOMAIN
            unmarked += 1
    if unmarked:
        drop_functions(model, {OP})
    return unmarked
