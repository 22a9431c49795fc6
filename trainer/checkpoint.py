"""Trained drafters in the official EAGLE-3 checkpoint format, and the trainer's resumable checkpoints.

The official format is what the SafeAILab reference, SGLang and vLLM load: `config.json` (a one-layer
Llama config with `draft_vocab_size`) and `model.safetensors` with the keys `fc.weight`, `midlayer.*`,
`norm.weight`, `lm_head.weight`, `d2t` (int64 offsets) and `t2d` (bool); no `embed_tokens`.
A trainer checkpoint is such a folder (fp32) plus `trainer_state.pt`, so every checkpoint also exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from eaglex.exporter.drafter import DrafterConfig, Eagle3Drafter
from eaglex.exporter.target import TargetConfig, default_feature_layers

TRAINER_STATE = "trainer_state.pt"


def new_drafter_config(target: TargetConfig, draft_vocab_size: int) -> DrafterConfig:
    """A drafter shaped like one layer of the target (as official drafters are), default feature layers."""
    return DrafterConfig(
        hidden_size=target.hidden_size,
        num_heads=target.num_heads,
        num_kv_heads=target.num_kv_heads,
        head_dim=target.head_dim,
        intermediate_size=target.intermediate_size,
        rms_norm_eps=target.rms_norm_eps,
        vocab_size=target.vocab_size,
        draft_vocab_size=draft_vocab_size,
        feature_layers=default_feature_layers(target.num_layers),
        target_hidden_size=target.hidden_size,
    )


def official_config(
    config: DrafterConfig, max_position_embeddings: int, dtype: torch.dtype
) -> dict[str, Any]:
    """config.json as in the official drafters (SGLang's architecture name, which vLLM also accepts)."""
    return {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": config.vocab_size,
        "draft_vocab_size": config.draft_vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _replace_folder(staged: Path, out_dir: Path) -> None:
    """Puts a complete folder in place of out_dir: a reader sees the old folder or the new, never half."""
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    staged.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_drafter(
    drafter: Eagle3Drafter,
    out_dir: str | Path,
    max_position_embeddings: int,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Writes the drafter in the official format (weights in `dtype`; d2t and t2d keep theirs).

    extra: written as training.json (how it was made); trainer_state: saved for resuming.
    """
    out_dir = Path(out_dir)
    staged = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    config = official_config(drafter.config, max_position_embeddings, dtype)
    (staged / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {
        key: (value.cpu() if key in ("d2t", "t2d") else value.to("cpu", dtype)).detach().contiguous()
        for key, value in drafter.state_dict().items()
    }
    safetensors.torch.save_file(state, staged / "model.safetensors", metadata={"format": "pt"})
    if extra is not None:
        (staged / "training.json").write_text(json.dumps(extra, indent=2) + "\n")
    if trainer_state is not None:
        torch.save(trainer_state, staged / TRAINER_STATE)
    _replace_folder(staged, out_dir)
    return out_dir


def read_trainer_state(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The saved optimizer and progress of a trainer checkpoint, or None if there is none."""
    for folder in (checkpoint_dir, checkpoint_dir.with_name(checkpoint_dir.name + ".old")):
        if (folder / TRAINER_STATE).is_file():
            state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
            state["folder"] = str(folder)
            return state
    return None
