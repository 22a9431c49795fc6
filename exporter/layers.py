"""Building blocks shared by the target and the drafter: RMSNorm, RoPE, attention projections, SiLU MLP.

Plain torch with Hugging Face Llama numerics (fp32 norms, rotate-half RoPE), and shapes [B, S, ...] so the
same code serves export (B = 1) and drafter training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the weights' dtype, as Hugging Face does. Written as a division by the
        # square root (not a product with rsqrt) because that is the pattern onnxruntime fuses into one
        # SimplifiedLayerNormalization kernel: about 6% of a SmolLM2 decode step on the CPU.
        x32 = x.float()
        x32 = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def default_inv_freq(head_dim: int, theta: float) -> Tensor:
    """Unscaled RoPE inverse frequencies (the drafter's, and plain-RoPE targets')."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(position_ids: Tensor, inv_freq: Tensor, scaling: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos, sin [B, S, head_dim] for explicit positions: tree nodes sit at P + depth, not at their row."""
    freqs = position_ids[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos() * scaling, angles.sin() * scaling


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on x [B, S, heads, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


class SelfAttention(nn.Module):
    """Grouped-query attention projections; the attention itself is done by the caller (cache op or SDPA)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(in_features, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(in_features, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(in_features, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, out_features, bias=o_bias)
        # Qwen3 normalises each query and key head before RoPE.
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None

    def pack_qkv(self) -> None:
        """Merges the q, k and v projections into one matmul (`qkv_proj`), for export: one weight read
        and one graph node instead of three. Models that normalise q and k heads keep them apart."""
        if self.q_norm is not None:
            return
        projections = (self.q_proj, self.k_proj, self.v_proj)
        packed = nn.Linear(self.q_proj.in_features, sum(p.out_features for p in projections))
        with torch.no_grad():
            packed.weight.copy_(torch.cat([p.weight for p in projections]))
            if self.q_proj.bias is not None:
                packed.bias.copy_(torch.cat([p.bias for p in projections]))
            else:
                packed.bias = None
        self.qkv_proj = packed

    def packed_qkv(self, x: Tensor) -> Tensor:
        """q, k and v side by side [B, S, (heads + 2 kv_heads) d], before RoPE (which the attention op
        applies itself)."""
        if hasattr(self, "qkv_proj"):
            return self.qkv_proj(x)
        batch, rows = x.shape[:2]
        q, k = self.q_proj(x), self.k_proj(x)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.view(batch, rows, self.num_heads, self.head_dim)).flatten(2)
            k = self.k_norm(k.view(batch, rows, self.num_kv_heads, self.head_dim)).flatten(2)
        return torch.cat([q, k, self.v_proj(x)], dim=-1)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, S, heads*d], k and v [B, S, kv_heads*d], RoPE applied to q and k."""
        batch, rows = x.shape[:2]
        q = self.q_proj(x).view(batch, rows, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, rows, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.flatten(2), k.flatten(2), self.v_proj(x)


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
