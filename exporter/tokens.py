"""Tokenizer files and special tokens for the artifact: the runtime reads the tokenizer, never the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError

# What the runtime's tokenizer and chat template need; tokenizer.json is self-contained (no vocab.json).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# Chat models end a turn with one of these; generation must stop there even when config.json's eos differs.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def copy_tokenizer(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files present in model_dir; returns their names."""
    copied = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(model_dir / name, out_dir / name)
    return copied


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def special_tokens(model_dir: Path) -> dict[str, Any]:
    """The manifest's `tokens`: bos, every stop token (generation config, config, chat end of turn), pad."""
    from tokenizers import Tokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise EaglexError(
            f"no tokenizer.json in {model_dir}: the runtime needs a fast tokenizer; write one with "
            "transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )

    config = _json(model_dir / "config.json")
    generation = _json(model_dir / "generation_config.json")
    tokenizer_config = _json(model_dir / "tokenizer_config.json")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    eos_token = tokenizer_config.get("eos_token")
    if isinstance(eos_token, dict):  # older tokenizer_config files store AddedToken dicts
        eos_token = eos_token.get("content")
    named = [eos_token, *END_OF_TURN_TOKENS] if eos_token else list(END_OF_TURN_TOKENS)
    by_name = [tokenizer.token_to_id(token) for token in named]
    candidates = _ids(generation.get("eos_token_id")) + _ids(config.get("eos_token_id")) + by_name
    eos = list(dict.fromkeys(i for i in candidates if i is not None))

    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    has_template = "chat_template" in tokenizer_config or any(
        (model_dir / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    return {
        "bos_token_id": bos,
        "eos_token_ids": eos,
        "pad_token_id": pad if pad is not None else (eos[0] if eos else None),
        "has_chat_template": has_template,
    }
