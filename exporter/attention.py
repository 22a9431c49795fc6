"""Tree attention: the one op through which every attention layer of the exported graphs goes.

In torch it is a custom op with a real implementation (so the torch modules can be checked against
Hugging Face before export) and a fake one (for tracing). There are two graph flavours, and this file is
the only place that knows them:

- `onnxruntime` (default): a single `com.microsoft.GroupQueryAttention` node with `causal=0` and an
  additive `attention_bias`: the tree mask comes from the runtime, and `causal=1` would silently mask it
  wrong. Mask inputs: attention_bias [1, 1, S, L] float, seqlens_k [1], total_sequence_length [].
  In the target, the node also applies RoPE (`do_rotary`, cos/sin tables, explicit position_ids: a tree
  node's position is not its slot) to packed q/k/v: 702 nodes instead of 1310 for SmolLM2, 1.07x
  faster decoding on 2 CPU threads (docs/BENCHMARKS.md).
- `tensorrt`: an `eaglex::TreeAttention` node (plugins/README.md), the TensorRT plugin's op. Mask inputs:
  tree_mask [1, S, W] int32 (bit-packed), cache_len [1], mask_start [1].

The modules pass their three mask inputs through untouched, so `tree_attention` picks the flavour from
the mask's dtype (float: bias, int32: bits), and `graphs.py` picks it by the example inputs it traces.
This file holds the torch side and the mask inputs; attention_onnx.py turns each op into its ONNX node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.export import Dim

from eaglex.errors import EaglexError

from .layers import apply_rope


@torch.library.custom_op("eaglex::tree_attention", mutates_args=())
def bias_tree_attention(
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
    total = int(total_sequence_length)
    return _attend(
        query, key, value, past_key, past_value, total, attention_bias, num_heads, kv_num_heads, scale
    )


@torch.library.custom_op("eaglex::tree_attention_packed", mutates_args=())
def packed_tree_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    cache_len: Tensor,
    mask_start: Tensor,
    tree_mask: Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The same attention with the plugin's mask: cache_len = P, mask_start = C (int32 [1]), tree_mask
    int32 [1, S, W], bit (c - C) % 32 of word (c - C) // 32 set where row s may attend to column c >= C."""
    total = int(cache_len[0]) + query.shape[1]
    start = int(mask_start[0])
    words = tree_mask[0, :, :, None].to(torch.int64)
    bits = ((words >> torch.arange(32)) & 1).flatten(1).bool()  # [S, 32 W]: column start + i
    visible = torch.ones(query.shape[1], total, dtype=torch.bool)
    visible[:, start:] = bits[:, : total - start]
    bias = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))[None, None]
    return _attend(query, key, value, past_key, past_value, total, bias, num_heads, kv_num_heads, scale)


@torch.library.custom_op("eaglex::tree_attention_rotary", mutates_args=())
def rotary_tree_attention(
    qkv: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    seqlens_k: Tensor,
    total_sequence_length: Tensor,
    attention_bias: Tensor,
    cos_cache: Tensor,
    sin_cache: Tensor,
    position_ids: Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """bias_tree_attention with RoPE inside, as one GroupQueryAttention node takes it (`onnxruntime`
    flavour of the target): qkv [1, S, (num_heads + 2 kv_num_heads) d] packed and not yet rotated;
    cos_cache, sin_cache [M, d/2] (rotate-half RoPE at positions 0..M-1, any scaling applied);
    position_ids [1, S], each row's RoPE position (a tree node's is P + depth, not its slot)."""
    del seqlens_k
    head_dim = past_key.shape[-1]
    q, k, v = qkv.split([num_heads * head_dim, kv_num_heads * head_dim, kv_num_heads * head_dim], dim=-1)
    cos, sin = cos_cache[position_ids[0]].repeat(1, 2)[None], sin_cache[position_ids[0]].repeat(1, 2)[None]
    rows = qkv.shape[1]
    q = apply_rope(q.view(1, rows, num_heads, head_dim), cos, sin).flatten(2)
    k = apply_rope(k.view(1, rows, kv_num_heads, head_dim), cos, sin).flatten(2)
    total = int(total_sequence_length)
    return _attend(q, k, v, past_key, past_value, total, attention_bias, num_heads, kv_num_heads, scale)


@rotary_tree_attention.register_fake
def _(qkv, past_key, past_value, seqlens_k, total_sequence_length, attention_bias, *rest):
    num_heads = rest[3]
    out = qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads * past_key.shape[-1])
    return out, torch.empty_like(past_key), torch.empty_like(past_value)


@bias_tree_attention.register_fake
@packed_tree_attention.register_fake
def _(query, key, value, past_key, past_value, length_a, length_b, mask, *attributes):
    del attributes  # shapes do not depend on them
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    total: int,
    bias: Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    rows = query.shape[1]
    head_dim = past_key.shape[-1]
    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, total - rows : total] = key.view(1, rows, kv_num_heads, head_dim).transpose(1, 2)
    present_value[:, :, total - rows : total] = value.view(1, rows, kv_num_heads, head_dim).transpose(1, 2)

    group = num_heads // kv_num_heads
    q = query.view(1, rows, num_heads, head_dim).transpose(1, 2)
    k = present_key[:, :, :total].repeat_interleave(group, dim=1)
    v = present_value[:, :, :total].repeat_interleave(group, dim=1)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(1, rows, num_heads * head_dim)
    return out, present_key, present_value


def tree_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    past_key: Tensor,
    past_value: Tensor,
    length_a: Tensor,
    length_b: Tensor,
    mask: Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The modules' attention call. (length_a, length_b, mask) are the flavour's mask inputs:
    (seqlens_k, total_sequence_length, attention_bias) with a float mask, (cache_len, mask_start,
    tree_mask) with an int32 one."""
    op = packed_tree_attention if mask.dtype == torch.int32 else bias_tree_attention
    return op(
        query, key, value, past_key, past_value, length_a, length_b, mask, num_heads, kv_num_heads, scale
    )


BACKENDS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class MaskInputs:
    """A flavour's three mask inputs as the graphs take them, in the modules' argument order."""

    names: tuple[str, str, str]
    examples: tuple[Tensor, Tensor, Tensor]
    dynamic_shapes: tuple[dict | None, dict | None, dict | None]
    dim_names: dict[str, dict[int, str]]


def mask_inputs(backend: str, rows: int, past_rows: int, s: Any, length: Any, max_context: int) -> MaskInputs:
    """Example mask inputs for tracing `rows` new rows after `past_rows`; s, length: the S and L dims."""
    total = past_rows + rows
    if backend == "onnxruntime":
        return MaskInputs(
            ("attention_bias", "seqlens_k", "total_sequence_length"),
            (
                torch.zeros(1, 1, rows, total),
                torch.tensor([total - 1], dtype=torch.int32),
                torch.tensor(total, dtype=torch.int32),
            ),
            ({2: s, 3: length}, None, None),
            {"attention_bias": {2: "S", 3: "L"}},
        )
    if backend == "tensorrt":
        # Two words in the example so torch.export does not specialise W to 1; words past L are ignored.
        words = Dim("W", min=1, max=-(-max_context // 32))
        return MaskInputs(
            ("tree_mask", "cache_len", "mask_start"),
            (
                torch.full((1, rows, 2), -1, dtype=torch.int32),
                torch.tensor([past_rows], dtype=torch.int32),
                torch.tensor([0], dtype=torch.int32),
            ),
            ({1: s, 2: words}, None, None),
            {"tree_mask": {1: "S", 2: "W"}},
        )
    raise EaglexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
