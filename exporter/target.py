"""The target LLM as exported: one forward per call over S new rows against a preallocated KV cache.

Inputs and outputs are exactly those of `target.onnx` in docs/ARTIFACT.md. Llama, Mistral, Qwen2 and
Qwen3 differ only in biases and Qwen3's per-head q/k norms, which `TargetConfig` records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import rotary_tree_attention, tree_attention
from .layers import GatedMLP, RMSNorm, SelfAttention, rope_cos_sin


@dataclass(frozen=True)
class TargetConfig:
    architecture: str  # "llama", "mistral", "qwen2" or "qwen3"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's feature layers when the drafter does not name them: low, middle and high."""
    return 2, num_layers // 2, num_layers - 3


class DecoderLayer(nn.Module):
    def __init__(self, config: TargetConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(
            config.hidden_size,
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            qkv_bias=config.qkv_bias,
            o_bias=config.o_bias,
            qk_norm_eps=config.rms_norm_eps if config.qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)

    def forward(
        self,
        h: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        past_key: Tensor,
        past_value: Tensor,
        attention_bias: Tensor,
        seqlens_k: Tensor,
        total_sequence_length: Tensor,
        rotary: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """cos, sin: RoPE of the rows; or rotary: (cos_cache, sin_cache, position_ids) when the attention
        op applies RoPE itself."""
        attn = self.self_attn
        x = self.input_layernorm(h)
        heads = (attn.num_heads, attn.num_kv_heads, attn.scale)
        if rotary is not None:
            out, present_key, present_value = rotary_tree_attention(
                attn.packed_qkv(x), past_key, past_value, seqlens_k, total_sequence_length, attention_bias,
                *rotary, *heads,
            )  # fmt: skip
        else:
            assert cos is not None and sin is not None
            q, k, v = attn.project(x, cos, sin)
            out, present_key, present_value = tree_attention(
                q, k, v, past_key, past_value, seqlens_k, total_sequence_length, attention_bias, *heads
            )
        h = h + attn.o_proj(out)
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, present_key, present_value


class Target(nn.Module):
    def __init__(
        self,
        config: TargetConfig,
        inv_freq: Tensor,
        rope_scaling: float = 1.0,
        feature_layers: tuple[int, ...] | None = None,
    ) -> None:
        """inv_freq, rope_scaling: RoPE frequencies and cos/sin factor, any Llama-3/YaRN scaling applied."""
        super().__init__()
        self.config = config
        self.feature_layers = tuple(feature_layers or default_feature_layers(config.num_layers))
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.rope_scaling = rope_scaling
        self.rope_tables: tuple[Tensor, Tensor] | None = None

    def fuse_attention(self, max_context: int) -> None:
        """For the onnxruntime flavour: RoPE moves into GroupQueryAttention, which reads cos/sin tables
        for positions < max_context, and each layer's q, k and v projections become one matmul. That
        removes about ten graph nodes per layer, each a few microseconds of a decode step on a CPU."""
        freqs = torch.arange(max_context, dtype=torch.float32)[:, None] * self.inv_freq
        self.rope_tables = (freqs.cos() * self.rope_scaling, freqs.sin() * self.rope_scaling)
        for layer in self.layers:
            layer.self_attn.pack_qkv()

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_bias: Tensor,
        seqlens_k: Tensor,
        total_sequence_length: Tensor,
        logit_index: Tensor,
        past: list[Tensor],
    ) -> tuple[Tensor, ...]:
        """past: [past_key.0, past_value.0, past_key.1, ...] -> logits, features, present_key.0, ..."""
        h = self.embed_tokens(input_ids)
        # The tables serve the onnxruntime flavour (a float mask); the plugin op takes rotated q and k.
        rotary, cos, sin = None, None, None
        if self.rope_tables is not None and attention_bias.is_floating_point():
            rotary = (*self.rope_tables, position_ids)
        else:
            cos, sin = rope_cos_sin(position_ids, self.inv_freq, self.rope_scaling)
        captured: dict[int, Tensor] = {}
        presents: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i in self.feature_layers:
                captured[i] = h  # the residual stream *before* layer i (HF hidden_states[i])
            h, present_key, present_value = layer(
                h, cos, sin, past[2 * i], past[2 * i + 1], attention_bias, seqlens_k, total_sequence_length,
                rotary,
            )  # fmt: skip
            presents += [present_key, present_value]
        # Only the requested rows pay for the final norm and lm_head (prefill needs one row of S).
        logits = self.lm_head(self.norm(h.index_select(1, logit_index)))
        features = torch.cat([captured[i] for i in self.feature_layers], dim=-1)
        return logits, features, *presents
