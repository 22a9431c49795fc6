"""Tree attention in the ONNX graphs: each torch op of exporter/attention.py becomes one node.

- `onnxruntime`: `com.microsoft.GroupQueryAttention` (with `do_rotary` in the target), whose schema onnx
  itself does not know, so the part we use is registered here;
- `tensorrt`: `eaglex::TreeAttention`, the TensorRT plugin's op as plugins/README.md defines it.
"""

from __future__ import annotations

import onnx.defs
import torch
from onnxscript import values

from . import attention  # noqa: F401  (registers the torch ops the translation table names)


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
            attr("do_rotary", kinds.INT, ""),
            attr("rotary_interleaved", kinds.INT, ""),
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


def _onnxruntime_rotary_tree_attention(
    qkv,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    attention_bias,
    cos_cache,
    sin_cache,
    position_ids,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
):
    return _GQA(
        qkv,  # packed: key and value are absent
        None,
        None,
        past_key,
        past_value,
        seqlens_k,
        total_sequence_length,
        cos_cache,
        sin_cache,
        position_ids,
        attention_bias,
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        scale=scale,
        causal=0,
        do_rotary=1,
        rotary_interleaved=0,
    )


PLUGIN_DOMAIN, PLUGIN_OP, PLUGIN_VERSION = "eaglex", "TreeAttention", "1"


def _tree_attention_schema() -> onnx.defs.OpSchema:
    """`eaglex::TreeAttention` as plugins/README.md defines it."""
    param = onnx.defs.OpSchema.FormalParameter
    inputs = [param(name, "T") for name in ("query", "key", "value", "past_key", "past_value")]
    inputs += [param(name, "tensor(int32)") for name in ("cache_len", "mask_start", "tree_mask")]
    outputs = [param(name, "T") for name in ("output", "present_key", "present_value")]
    attr, kinds = onnx.defs.OpSchema.Attribute, onnx.defs.OpSchema.AttrType
    return onnx.defs.OpSchema(
        PLUGIN_OP,
        PLUGIN_DOMAIN,
        1,
        inputs=inputs,
        outputs=outputs,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=[
            attr("num_heads", kinds.INT, ""),
            attr("kv_num_heads", kinds.INT, ""),
            attr("scale", kinds.FLOAT, ""),
            # TensorRT's ONNX parser finds the plugin by op type, these two attributes and its registry.
            attr("plugin_version", kinds.STRING, ""),
            attr("plugin_namespace", kinds.STRING, ""),
        ],
    )


def _register_tree_attention() -> onnx.defs.OpSchema:
    if not onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        onnx.defs.register_schema(_tree_attention_schema())
    return onnx.defs.get_schema(PLUGIN_OP, 1, PLUGIN_DOMAIN)


_TREE_ATTENTION = values.Op(values.Opset(PLUGIN_DOMAIN, 1), PLUGIN_OP, _register_tree_attention())


def _plugin_tree_attention(
    query,
    key,
    value,
    past_key,
    past_value,
    cache_len,
    mask_start,
    tree_mask,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
):
    return _TREE_ATTENTION(
        query,
        key,
        value,
        past_key,
        past_value,
        cache_len,
        mask_start,
        tree_mask,
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        scale=scale,
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_DOMAIN,
    )


def onnx_translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: each flavour's op becomes its ONNX node."""
    return {
        torch.ops.eaglex.tree_attention.default: _onnxruntime_tree_attention,
        torch.ops.eaglex.tree_attention_rotary.default: _onnxruntime_rotary_tree_attention,
        torch.ops.eaglex.tree_attention_packed.default: _plugin_tree_attention,
    }
