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

from .cpu_ops import default_opset, mark_op, passthrough, unmark_op

OP, ORT_DOMAIN = "MatMulNBits", "com.microsoft"
INPUTS, OUTPUTS = ["A", "B", "scales"], ["Y"]
ATTRIBUTES = ["K", "N", "bits", "block_size", "accuracy_level"]


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
    types = dict.fromkeys(ATTRIBUTES, onnx.AttributeProto.INT)
    function = passthrough(OP, ORT_DOMAIN, INPUTS, OUTPUTS, types, default_opset(model))
    return mark_op(model, function, lambda node: _supported(node, constants))


def unmark(model: onnx.ModelProto) -> int:
    """The inverse of mark: onnxruntime's MatMulNBits nodes again."""
    return unmark_op(model, OP, ORT_DOMAIN)
