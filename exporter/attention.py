"""Tree attention: the one op through which every attention layer of the exported graphs goes.

In torch it is a custom op with a real implementation (so the torch modules can be checked against
Hugging Face before export) and a fake one (for tracing). In ONNX it becomes a single
`com.microsoft.GroupQueryAttention` node with `causal=0` and an additive `attention_bias`: the tree mask
comes from the runtime, and `causal=1` would silently mask it wrong. The translation lives only here, so
another backend (e.g. a TensorRT plugin node) needs one more translation function and nothing else.
"""

from __future__ import annotations

import onnx.defs
import torch
from onnxscript import values
from torch import Tensor


@torch.library.custom_op("eaglex::tree_attention", mutates_args=())
def tree_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    seqlens_k: Tensor,
    total_sequence_length: Tensor,
    attention_bias: Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Attend S new rows to cache slots [0, L) after writing their K/V at slots [L - S, L).

    query [1, S, num_heads*d]; key, value [1, S, kv_num_heads*d]; past_key, past_value [1, kv, M, d];
    total_sequence_length = L (int32 scalar); attention_bias [1, 1, S, L] additive (0 / -inf).
    seqlens_k (= L - 1) is unused here but is part of the op so the ONNX node gets it.
    Returns (out [1, S, num_heads*d], present_key, present_value), the presents being copies of the
    pasts with the new rows written (ONNX Runtime writes in place when the runtime aliases them).
    """
    del seqlens_k
    rows = query.shape[1]
    head_dim = past_key.shape[-1]
    total = int(total_sequence_length)
    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, total - rows : total] = key.view(1, rows, kv_num_heads, head_dim).transpose(1, 2)
    present_value[:, :, total - rows : total] = value.view(1, rows, kv_num_heads, head_dim).transpose(1, 2)

    group = num_heads // kv_num_heads
    q = query.view(1, rows, num_heads, head_dim).transpose(1, 2)
    k = present_key[:, :, :total].repeat_interleave(group, dim=1)
    v = present_value[:, :, :total].repeat_interleave(group, dim=1)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * scale + attention_bias, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(1, rows, num_heads * head_dim)
    return out, present_key, present_value


@tree_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, attention_bias, *attributes):
    del attributes  # shapes do not depend on them
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _group_query_attention_schema() -> onnx.defs.OpSchema:
    """The part of onnxruntime's GroupQueryAttention schema we use (onnx itself does not know it)."""
    param = onnx.defs.OpSchema.FormalParameter
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    inputs = [
        param("query", "T"),
        param("key", "T", param_option=optional),
        param("value", "T", param_option=optional),
        param("past_key", "T", param_option=optional),
        param("past_value", "T", param_option=optional),
        param("seqlens_k", "M"),
        param("total_sequence_length", "M"),
        param("cos_cache", "T", param_option=optional),
        param("sin_cache", "T", param_option=optional),
        param("position_ids", "tensor(int64)", param_option=optional),
        param("attention_bias", "T", param_option=optional),
    ]
    outputs = [param("output", "T"), param("present_key", "T"), param("present_value", "T")]
    attr = onnx.defs.OpSchema.Attribute
    kinds = onnx.defs.OpSchema.AttrType
    return onnx.defs.OpSchema(
        "GroupQueryAttention",
        "com.microsoft",
        1,
        inputs=inputs,
        outputs=outputs,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[
            attr("num_heads", kinds.INT, ""),
            attr("kv_num_heads", kinds.INT, ""),
            attr("scale", kinds.FLOAT, ""),
            attr("causal", kinds.INT, ""),
        ],
    )


def _register_group_query_attention() -> onnx.defs.OpSchema:
    # onnx keeps registered schemas process-wide and refuses a second registration of the same op.
    if not onnx.defs.has("GroupQueryAttention", "com.microsoft"):
        onnx.defs.register_schema(_group_query_attention_schema())
    return onnx.defs.get_schema("GroupQueryAttention", 1, "com.microsoft")


_GQA = values.Op(values.Opset("com.microsoft", 1), "GroupQueryAttention", _register_group_query_attention())


def _onnxruntime_tree_attention(
    query,
    key,
    value,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    attention_bias,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
):
    return _GQA(
        query,
        key,
        value,
        past_key,
        past_value,
        seqlens_k,
        total_sequence_length,
        None,  # cos_cache: RoPE is applied in the graph, before this node
        None,  # sin_cache
        None,  # position_ids
        attention_bias,
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        scale=scale,
        causal=0,
    )


def onnx_translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: tree attention as onnxruntime's GQA node."""
    return {torch.ops.eaglex.tree_attention.default: _onnxruntime_tree_attention}
