"""Numpy reference of `eaglex::TreeAttention`: the op's contract in executable form (plugins/README.md).

Accumulates in float64, so it judges both the CPU op and the CUDA kernel.
"""

from __future__ import annotations

import numpy as np

from .mask import decode_mask


def tree_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_key: np.ndarray,
    past_value: np.ndarray,
    cache_len: np.ndarray,
    mask_start: np.ndarray,
    tree_mask: np.ndarray,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> np.ndarray:
    """Writes the new rows' K/V into past_key/past_value at [P, P + S) in place; returns out [1, S, heads*d].

    query [1, S, heads*d]; key, value [1, S, kv*d]; past_key, past_value [1, kv, M, d];
    cache_len = P, mask_start = C (int32 [1]); tree_mask int32 [1, S, W]. A row that sees no column
    returns zeros.
    """
    rows, head_dim = query.shape[1], past_key.shape[-1]
    start, total = int(mask_start[0]), int(cache_len[0]) + rows
    if not 0 <= start <= total - rows or total > past_key.shape[2]:
        raise ValueError(f"need 0 <= mask_start <= cache_len and cache_len + S <= M, got {start}, {total}")
    past_key[0, :, total - rows : total] = key.reshape(rows, kv_num_heads, head_dim).transpose(1, 0, 2)
    past_value[0, :, total - rows : total] = value.reshape(rows, kv_num_heads, head_dim).transpose(1, 0, 2)

    visible = decode_mask(start, tree_mask, total)  # [S, L]
    group = num_heads // kv_num_heads
    q = query.reshape(rows, num_heads, head_dim).transpose(1, 0, 2).astype(np.float64)
    k = np.repeat(past_key[0, :, :total].astype(np.float64), group, axis=0)
    v = np.repeat(past_value[0, :, :total].astype(np.float64), group, axis=0)
    scores = np.where(visible, q @ k.transpose(0, 2, 1) * scale, -np.inf)  # [heads, S, L]
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    norm = weights.sum(-1, keepdims=True)
    out = (weights @ v) / np.where(norm > 0, norm, 1.0)
    return out.transpose(1, 0, 2).reshape(1, rows, num_heads * head_dim).astype(query.dtype)
