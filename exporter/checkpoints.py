"""Checkpoints -> torch modules: Hugging Face target folders and official-format EAGLE-3 drafters.

Everything a user can get wrong here (an unsupported model, a drafter trained for another target, a
missing file) is an `EaglexError` naming the file, both numbers and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from eaglex.errors import EaglexError

from .drafter import DrafterConfig, Eagle3Drafter
from .target import Target, TargetConfig, default_feature_layers

# Hugging Face class name -> our architecture name (the manifest's target.architecture).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
DRAFTER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise EaglexError(f"no config.json in {path.parent}: pass the folder of a {what}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EaglexError(f"{path} is not valid JSON ({exc}): re-download the {what}") from None
    if not isinstance(data, dict):
        raise EaglexError(f"{path} must hold a JSON object: re-download the {what}")
    return data


def _safetensors_size(path: Path) -> int | None:
    """The size a safetensors file must have by its header (8-byte length, JSON, data); None if unreadable."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        length = int.from_bytes(head, "little")
        if length > path.stat().st_size:
            return None
        try:
            header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None
    return 8 + length + max(ends, default=0)


def check_weights(folder: Path, what: str) -> None:
    """A model or drafter folder has weights, and no safetensors file among them is truncated: found in
    a second, before loading the rest for a minute. what: "model" or "drafter"."""
    index = [folder / f"{name}.index.json" for name in ("model.safetensors", "pytorch_model.bin")]
    files = [
        folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()
    ]
    for path in (p for p in index if p.is_file()):
        shards = _read_json(path, f"Hugging Face {what}").get("weight_map")
        if not isinstance(shards, dict) or not all(isinstance(s, str) for s in shards.values()):
            raise EaglexError(f"{path} has no weight_map of file names: download the {what} again")
        files += [folder / shard for shard in sorted(set(shards.values()))]
    if not files:
        raise EaglexError(
            f"no weights (model.safetensors or pytorch_model.bin) in {folder}: pass a complete {what} folder"
        )
    for path in files:
        if not path.is_file():
            raise EaglexError(f"{path}, listed in the weight index, is missing: download the {what} again")
        if path.suffix == ".safetensors":
            size, need = path.stat().st_size, _safetensors_size(path)
            if need is None or size < need:
                raise EaglexError(
                    f"{path} is truncated or damaged ({size} bytes; its header "
                    f"{'needs ' + str(need) if need else 'cannot be read'}): download the {what} again"
                )


def read_target_config(model_dir: str | Path) -> TargetConfig:
    """The target's shape from its config.json alone (no weights loaded)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    raw = _read_json(model_dir / "config.json", "Hugging Face model")
    # Folders converted from GGUF may name only the model_type ("llama"), not the class.
    name = (raw.get("architectures") or [raw.get("model_type", "<none>")])[0]
    arch = SUPPORTED_ARCHITECTURES.get(name, name if name in SUPPORTED_ARCHITECTURES.values() else None)
    if arch is None:
        raise EaglexError(
            f"unsupported architecture {name} in {model_dir}/config.json: "
            "eaglex exports Llama, Mistral, Qwen2 and Qwen3 models"
        )
    hf = AutoConfig.from_pretrained(model_dir)
    if hf.hidden_act != "silu":
        raise EaglexError(
            f"hidden_act {hf.hidden_act} in {model_dir}/config.json is not supported: "
            "eaglex exports SiLU-gated MLPs only"
        )
    attention_bias = bool(getattr(hf, "attention_bias", False))
    return TargetConfig(
        architecture=arch,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        vocab_size=hf.vocab_size,
        rms_norm_eps=hf.rms_norm_eps,
        max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(hf.tie_word_embeddings),
        # Qwen2 always has q/k/v biases and no o_proj bias; Llama and Qwen3 follow `attention_bias`.
        qkv_bias=arch == "qwen2" or attention_bias,
        o_bias=arch in ("llama", "qwen3") and attention_bias,
        mlp_bias=arch == "llama" and bool(getattr(hf, "mlp_bias", False)),
        qk_norm=arch == "qwen3",
        sliding_window=getattr(hf, "sliding_window", None),
    )


def load_target(model_dir: str | Path, feature_layers: tuple[int, ...] | None = None) -> Target:
    """Load a Hugging Face Llama/Mistral/Qwen2/Qwen3 folder into our fp32 `Target` module."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    config = read_target_config(model_dir)
    # transformers resolves sharding, .bin vs safetensors and tied weights; we keep only the tensors.
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rotary = hf.model.rotary_emb
    if rotary.rope_type in ("dynamic", "longrope"):
        raise EaglexError(
            f"rope type {rotary.rope_type} in {model_dir}/config.json changes with the sequence length: "
            "eaglex exports fixed-frequency RoPE only (default, linear, llama3, yarn)"
        )
    # HF's own RoPE initialisation, so Llama-3 / YaRN scaling is exactly theirs.
    inv_freq, scaling = rotary.inv_freq.detach().clone(), float(rotary.attention_scaling)
    # Built on the meta device and then handed HF's tensors, so the weights are never held twice.
    with torch.device("meta"):
        target = Target(config, inv_freq, scaling, feature_layers)
    state = {key.removeprefix("model."): value for key, value in hf.state_dict().items()}
    target.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        target.lm_head.weight = target.embed_tokens.weight  # assign=True replaced the shared parameter
    target.inv_freq = inv_freq  # not in the state dict, so still on the meta device
    return target.eval()


def _feature_layers(raw: dict[str, Any], target: TargetConfig) -> tuple[int, ...]:
    eagle = raw.get("eagle_config") or {}
    named = (
        eagle.get("eagle_aux_hidden_state_layer_ids")
        or eagle.get("target_layer_ids")
        or raw.get("target_layer_ids")
    )
    return tuple(int(i) for i in named) if named else default_feature_layers(target.num_layers)


def drafter_config(drafter_dir: str | Path, target: TargetConfig) -> DrafterConfig:
    """Read and validate a drafter's config.json against the target it will draft for."""
    path = Path(drafter_dir) / "config.json"
    return _parse_drafter_config(_read_json(path, "EAGLE-3 drafter"), path, target)


def _parse_drafter_config(raw: dict[str, Any], path: Path, target: TargetConfig) -> DrafterConfig:
    if raw.get("hidden_size") != target.hidden_size:
        raise EaglexError(
            f"drafter hidden_size {raw.get('hidden_size')} in {path} does not match the target's hidden_size "
            f"{target.hidden_size}: use a drafter trained for this target"
        )
    if raw.get("vocab_size") != target.vocab_size:
        raise EaglexError(
            f"drafter vocab_size {raw.get('vocab_size')} in {path} does not match the target's vocab_size "
            f"{target.vocab_size}: use a drafter trained for this target"
        )
    layers = _feature_layers(raw, target)
    if len(layers) != 3:
        raise EaglexError(f"drafter in {path} names {len(layers)} feature layers: EAGLE-3 drafters use 3")
    for layer in layers:
        if not 0 <= layer < target.num_layers:
            raise EaglexError(
                f"drafter feature layer {layer} in {path} is out of range for a target with "
                f"{target.num_layers} layers: use a drafter trained for this target"
            )
    heads = raw["num_attention_heads"]
    rope = raw.get("rope_parameters") or {}
    return DrafterConfig(
        hidden_size=raw["hidden_size"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads", heads),
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        intermediate_size=raw["intermediate_size"],
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        vocab_size=raw["vocab_size"],
        draft_vocab_size=raw.get("draft_vocab_size") or raw["vocab_size"],
        feature_layers=layers,
        target_hidden_size=target.hidden_size,
        rope_theta=float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0),
    )


def _read_drafter_weights(drafter_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in DRAFTER_WEIGHT_FILES:
        path = drafter_dir / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return path, safetensors.torch.load_file(path)
            return path, torch.load(path, map_location="cpu", weights_only=True)
    raise EaglexError(
        f"no model.safetensors or pytorch_model.bin in {drafter_dir}: pass an EAGLE-3 drafter folder"
    )


def load_drafter(drafter_dir: str | Path, target: TargetConfig) -> Eagle3Drafter:
    """Load an official-format EAGLE-3 checkpoint (`midlayer.*` or `layers.0.*` keys) as an fp32 module."""
    drafter_dir = Path(drafter_dir)
    config = drafter_config(drafter_dir, target)
    path, raw_state = _read_drafter_weights(drafter_dir)
    state = {key.replace("layers.0.", "midlayer.", 1): value for key, value in raw_state.items()}
    state.pop("embed_tokens.weight", None)  # some exporters copy the target's table; we use the target's
    drafter = Eagle3Drafter(config)
    if "d2t" not in state and config.draft_vocab_size == config.vocab_size:
        state["d2t"], state["t2d"] = drafter.d2t, drafter.t2d  # identity mapping
    expected = drafter.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise EaglexError(
            f"{path} lacks {', '.join(missing[:3])}: expected an official EAGLE-3 drafter "
            "(fc.weight, midlayer.* or layers.0.*, norm.weight, lm_head.weight, d2t, t2d)"
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise EaglexError(
            f"{path} has unexpected weights {', '.join(unexpected[:3])}: "
            "expected an official EAGLE-3 drafter with one decoder layer"
        )
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise EaglexError(
                f"drafter weight {key} in {path} has shape {list(state[key].shape)}, expected "
                f"{list(value.shape)} from {drafter_dir}/config.json and the target"
            )
    state = {key: value if key in ("d2t", "t2d") else value.float() for key, value in state.items()}
    drafter.load_state_dict(state, strict=True)
    target_ids = drafter.target_ids()
    if target_ids.min() < 0 or target_ids.max() >= target.vocab_size:
        raise EaglexError(
            f"d2t in {path} maps draft tokens outside the target vocabulary of {target.vocab_size}: "
            "d2t must hold offsets (target_id = draft_id + d2t[draft_id])"
        )
    return drafter.eval()


def write_random_drafter(
    target_dir: str | Path, out_dir: str | Path, draft_vocab_size: int = 8192, seed: int = 0
) -> Path:
    """Write an untrained drafter for `target_dir` in the official format (for tests and plumbing).

    The draft vocabulary is the lowest `draft_vocab_size` target ids (all of them if the target has fewer).
    Weights are normal(0, 0.02) and norms 1, so outputs vary with the input without being degenerate.
    """
    target = read_target_config(target_dir)
    out_dir = Path(out_dir)
    draft_vocab = min(draft_vocab_size, target.vocab_size)
    raw = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": target.hidden_size,
        "intermediate_size": target.intermediate_size,
        "num_attention_heads": target.num_heads,
        "num_key_value_heads": target.num_kv_heads,
        "head_dim": target.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": target.rms_norm_eps,
        "rope_theta": 10000.0,
        "max_position_embeddings": target.max_position_embeddings,
        "vocab_size": target.vocab_size,
        "draft_vocab_size": draft_vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    drafter = Eagle3Drafter(_parse_drafter_config(raw, out_dir / "config.json", target))
    generator = torch.Generator().manual_seed(seed)
    for module in drafter.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.02, generator=generator)
    drafter.t2d.copy_(torch.arange(target.vocab_size) < draft_vocab)  # d2t stays 0: draft id == target id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    state = {key: value.contiguous() for key, value in drafter.state_dict().items()}
    safetensors.torch.save_file(state, out_dir / "model.safetensors")
    return out_dir
