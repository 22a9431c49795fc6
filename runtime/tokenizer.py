"""Text <-> token ids with the artifact's Hugging Face tokenizer files, without transformers."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from eaglex.errors import EaglexError


def _raise(message: str) -> None:
    raise EaglexError(f"chat template: {message}")


class Tokenizer:
    def __init__(self, folder: Path):
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise EaglexError(
                f"{folder} has no tokenizer.json; re-export the artifact from a model folder that has one"
            )
        self.tokenizer = HFTokenizer.from_file(str(path))
        config_path = folder / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        self.chat_template = (
            template_path.read_text() if template_path.is_file() else self.config.get("chat_template")
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Renders the chat template as transformers does (same jinja settings), then tokenizes the text."""
        if not self.chat_template:
            raise EaglexError("this model has no chat template; run without --chat")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        special = {k: v for k, v in self.config.items() if k.endswith("_token") and isinstance(v, str)}
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=True, **special
        )
        return self.encode(text, add_special_tokens=False)


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, holding back incomplete UTF-8 sequences.

    Decoding tokens one by one breaks words and multi-byte characters, so each step decodes a short
    window of recent tokens and emits only the part that is new and complete.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""
