"""Text <-> token ids with the artifact's Hugging Face tokenizer files, without transformers."""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from eaglex.errors import EaglexError
from eaglex.runtime.manifest import REEXPORT, read_json, read_text


def _raise(message: str) -> None:
    raise EaglexError(f"chat template: {message}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_failure(error: BaseException) -> bool:
    """An Exception, or the PanicException of a Rust library (tokenizers): it derives from BaseException."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


class Tokenizer:
    """The artifact's tokenizer.json, tokenizer_config.json and chat template; each file that cannot be
    read or parsed is one error naming it."""

    def __init__(self, folder: Path):
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise EaglexError(
                f"{folder} has no tokenizer.json; re-export the artifact from a model folder that has one"
            )
        text = read_text(path, "the tokenizer")
        try:
            self.tokenizer = HFTokenizer.from_str(text)
        except BaseException as e:
            if not _is_failure(e):
                raise
            raise EaglexError(f"{path} is not a valid tokenizer ({_first_line(e)}); {REEXPORT}") from None
        config_path = folder / "tokenizer_config.json"
        self.config = read_json(config_path, "the tokenizer") if config_path.is_file() else {}
        if not isinstance(self.config, dict):
            raise EaglexError(f"{config_path} must hold a JSON object; {REEXPORT}")
        template_path = folder / "chat_template.jinja"
        if template_path.is_file():
            source, template = template_path, read_text(template_path, "the chat template")
        else:
            source, template = config_path, _config_template(self.config.get("chat_template"), config_path)
        self.chat_template = None
        if template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            try:
                self.chat_template = env.from_string(template)
            except jinja2.TemplateError as e:
                raise EaglexError(f"the chat template in {source} does not parse ({e}); {REEXPORT}") from None
        self.template_source = source

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def prompt(self, text: str, chat: bool = False) -> list[int]:
        """A user's prompt as token ids, checked, in the chat template when `chat` (Engine.encode)."""
        if not isinstance(text, str):
            raise EaglexError(f"the prompt must be text (str), got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EaglexError(
                f"the prompt is not valid UTF-8 (character {e.start} cannot be encoded): pass UTF-8 text"
            ) from None
        if chat:
            return self.apply_chat_template([{"role": "user", "content": text}])
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Renders the chat template as transformers does (same jinja settings), then tokenizes the text."""
        if self.chat_template is None:
            raise EaglexError("this model has no chat template; run without --chat")
        special = {k: v for k, v in self.config.items() if k.endswith("_token") and isinstance(v, str)}
        try:
            text = self.chat_template.render(messages=messages, add_generation_prompt=True, **special)
        except EaglexError:
            raise
        except Exception as e:  # a template is a program: anything can go wrong while it runs
            raise EaglexError(
                f"the chat template in {self.template_source} fails ({_first_line(e)}); {REEXPORT}, "
                "or run without --chat"
            ) from None
        return self.encode(text, add_special_tokens=False)


def _config_template(value: object, path: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates (take "default")."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise EaglexError(f"{path}: chat_template must be a string or named templates with a default; {REEXPORT}")


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
