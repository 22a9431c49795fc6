"""GroupQueryAttention nodes marked for libeaglex's attention kernel, onnxruntime's as the fallback.

onnxruntime's CPU GroupQueryAttention spends 40 us a layer on one row after 300 tokens (23% of an int4
target pass on a 2-core Zen 5), mostly outside arithmetic: a rotary pass of its own, one GEMM call per
head, a score buffer the size of the cache. libeaglex's `eaglex.cpu.GroupQueryAttention`
(native/src/cpu_attention.cpp) does a (head, row) in one task, and gathers each row's visible columns in
slot order, so a tree row's output is bit for bit what decoding the same path one token at a time gives.

Each float32 `com.microsoft.GroupQueryAttention` node becomes `eaglex.cpu.GroupQueryAttention` with the same
inputs and attributes; the model defines that op as an ONNX function whose body is onnxruntime's node
(exporter/cpu_ops.py).
"""

from __future__ import annotations

import onnx
from onnx import helper

from .cpu_ops import default_opset, mark_op, passthrough, unmark_op

OP, ORT_DOMAIN = "GroupQueryAttention", "com.microsoft"
INPUTS = [
    "query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
    "cos_cache", "sin_cache", "position_ids", "attention_bias",
]  # fmt: skip
OUTPUTS = ["output", "present_key", "present_value"]
# What the exporter sets (exporter/attention_onnx.py) and the kernel implements; a node with any other
# attribute (a local window, softcap, smooth softmax) stays onnxruntime's.
ATTRIBUTES = ["num_heads", "kv_num_heads", "scale", "do_rotary", "rotary_interleaved", "causal"]


def _supported(node: onnx.NodeProto, head_dims: dict[str, int]) -> bool:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    head_dim = head_dims.get(node.input[3], 0) if len(node.input) > 3 else 0
    return (
        0 < head_dim <= 256
        and head_dim % 16 == 0  # the kernel's vectors: 16 floats
        and set(attributes) <= set(ATTRIBUTES)
        and attributes.get("rotary_interleaved", 0) == 0
    )


def _float_cache_head_dims(graph: onnx.GraphProto) -> dict[str, int]:
    """The head size of each float32 [1, kv_heads, capacity, head_dim] graph input."""
    dims = {}
    for i in graph.input:
        tensor = i.type.tensor_type
        shape = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type == onnx.TensorProto.FLOAT and len(shape) == 4:
            dims[i.name] = shape[3]
    return dims


def mark(model: onnx.ModelProto) -> int:
    """Marks every GroupQueryAttention node over a float32 KV cache (a graph input) whose head size is a
    multiple of 16 up to 256; returns how many."""
    head_dims = _float_cache_head_dims(model.graph)
    types = {
        name: onnx.AttributeProto.FLOAT if name == "scale" else onnx.AttributeProto.INT for name in ATTRIBUTES
    }
    function = passthrough(OP, ORT_DOMAIN, INPUTS, OUTPUTS, types, default_opset(model))
    return mark_op(model, function, lambda node: _supported(node, head_dims))


def unmark(model: onnx.ModelProto) -> int:
    """The inverse of mark: onnxruntime's GroupQueryAttention nodes again."""
    return unmark_op(model, OP, ORT_DOMAIN)
