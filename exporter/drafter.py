"""The EAGLE-3 drafter (arXiv 2503.01840; docs/ARTIFACT.md), with the official checkpoint's parameter names.

`step` is the layer's math with attention left to the caller, so a trainer can run it with plain SDPA
and its training-time-test mask; `forward` is the `drafter.onnx` graph, attention through the KV-cache op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import tree_attention
from .layers import GatedMLP, RMSNorm, SelfAttention, default_inv_freq, rope_cos_sin

# attend(q [B, S, heads*d], k [B, S, kv_heads*d], v) -> [B, S, heads*d], RoPE already applied.
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DrafterConfig:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    vocab_size: int  # the target's
    draft_vocab_size: int
    feature_layers: tuple[int, ...]  # target layers whose input residual stream feeds `fc`
    target_hidden_size: int
    rope_theta: float = 10000.0  # the drafter's own RoPE: never the target's scaling


class DrafterLayer(nn.Module):
    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.input_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps)
        # Queries, keys and values see [embedding, hidden] side by side: 2H wide.
        self.self_attn = SelfAttention(2 * h, h, config.num_heads, config.num_kv_heads, config.head_dim)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.mlp = GatedMLP(h, config.intermediate_size)


class Eagle3Drafter(nn.Module):
    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(
            len(config.feature_layers) * config.target_hidden_size, config.hidden_size, bias=False
        )
        self.midlayer = DrafterLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        # Official vocabulary mapping: target_id = draft_id + d2t[draft_id]; t2d marks draft tokens.
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
        inv_freq = default_inv_freq(config.head_dim, config.rope_theta)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rows(self, features: Tensor, hidden: Tensor) -> Tensor:
        """The drafter's input rows: fc(target features) followed by its own earlier hidden outputs."""
        return torch.cat([self.fc(features), hidden], dim=1)

    def step(self, input_embeds: Tensor, g: Tensor, position_ids: Tensor, attend: Attend) -> Tensor:
        """One drafter pass: rows g [B, S, H] with their token embeddings -> pre-norm hidden h2 [B, S, H]."""
        layer = self.midlayer
        x = torch.cat([layer.input_layernorm(input_embeds), layer.hidden_norm(g)], dim=-1)
        cos, sin = rope_cos_sin(position_ids, self.inv_freq)
        h1 = g + layer.self_attn.o_proj(attend(*layer.self_attn.project(x, cos, sin)))
        return h1 + layer.mlp(layer.post_attention_layernorm(h1))

    def target_ids(self) -> Tensor:
        """The target id of each draft id (d2t holds offsets)."""
        return torch.arange(len(self.d2t), device=self.d2t.device) + self.d2t

    def draft_logits(self, h: Tensor) -> Tensor:
        """Logits over the draft vocabulary (map argmaxes to target ids with `d2t`)."""
        return self.lm_head(self.norm(h))

    def forward(
        self,
        input_embeds: Tensor,
        features: Tensor,
        hidden: Tensor,
        position_ids: Tensor,
        attention_bias: Tensor,
        seqlens_k: Tensor,
        total_sequence_length: Tensor,
        logit_index: Tensor,
        top_k: Tensor,
        past_key: Tensor,
        past_value: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> hidden_out, topk_logprobs, topk_ids (target ids), present_key, present_value."""
        attn = self.midlayer.self_attn
        presents: list[Tensor] = []

        def attend_with_cache(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out, present_key, present_value = tree_attention(
                q,
                k,
                v,
                past_key,
                past_value,
                seqlens_k,
                total_sequence_length,
                attention_bias,
                attn.num_heads,
                attn.num_kv_heads,
                attn.scale,
            )
            presents.extend((present_key, present_value))
            return out

        hidden_out = self.step(input_embeds, self.rows(features, hidden), position_ids, attend_with_cache)
        logprobs = torch.log_softmax(self.draft_logits(hidden_out.index_select(1, logit_index)), dim=-1)
        # top_k is a graph input (one exported graph serves every tree shape), so it is data-dependent.
        k = top_k[0].item()
        torch._check(k >= 1)
        torch._check(k <= self.config.draft_vocab_size)
        values, draft_ids = torch.topk(logprobs, k, dim=-1)
        return hidden_out, values, draft_ids + self.d2t[draft_ids], *presents
