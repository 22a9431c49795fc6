"""User prompts written by the target itself, as Magpie does (Xu et al., 2024): an instruction-tuned model
given its chat template only up to the start of a user turn writes a request of the kind it was tuned on.

Why: a drafter learns the target's answers to the prompts it trains on, and ShareGPT's prompts (much pasted
code, long documents, follow-ups) are not the short requests of MT-bench's writing, STEM or humanities
questions, where the shipped drafter accepts least (docs/BENCHMARKS.md). The target's own requests follow
the mix of its instruction tuning, cost nothing to download and never run out.

Each request is sampled at temperature 1 in seeded batches, cached as token ids in a JSONL file (one line a
batch, kept whole so a rerun filters exactly as before), and resumed from it. Only complete requests
(ended by a stop token) of at least MIN_WORDS words are kept, each once, minus any that share a run of
words with an evaluation prompt. They are then answered like the data's first turns (`regenerate`).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eaglex.errors import EaglexError

from .data import EvalFilter, Message, prompt_words, render
from .decode import sampled_answers
from .jsonl import read_records
from .progress import Progress

MAX_PROMPT_TOKENS = 128  # a request still open after this many tokens is dropped
MIN_WORDS = 3  # shorter ones ("Hi!") have nothing to answer
MAX_WRITTEN_PER_KEPT = 4  # give up when fewer than one request in four is usable
_MARK = "\uf8ffUSER-TEXT\uf8ff"  # stands in for the user's text when finding where the template puts it


def user_turn_prefix(tokenizer: Any) -> list[int]:
    """Token ids of the chat template up to where the first user turn's text begins (the template's default
    system prompt included)."""
    text = render(tokenizer, [{"role": "user", "content": _MARK}], False)
    if text.count(_MARK) != 1:
        raise EaglexError("--self-prompts: the chat template does not render a user turn's text verbatim")
    return tokenizer(text[: text.index(_MARK)], add_special_tokens=False)["input_ids"]


def _batch_seed(seed: int, batch: int) -> int:
    return random.Random(f"self-prompts/{seed}/{batch}").getrandbits(63)


class RequestKeeper:
    """The first `count` usable requests of (text, complete) pairs fed in batches, and how many were dropped
    for what. Each request is judged once, when its batch comes. Requests that differ only in case and
    punctuation count as one."""

    def __init__(self, count: int, exclude: EvalFilter) -> None:
        self.count, self.exclude = count, exclude
        self.kept: list[str] = []
        self.dropped: Counter[str] = Counter()
        self._seen: set[str] = set()

    def add(self, texts: Iterable[tuple[str, bool]]) -> int:
        """Judge `texts` in order until `count` are kept; returns how many of them were kept."""
        before = len(self.kept)
        for text, complete in texts:
            if len(self.kept) == self.count:
                break
            text, words = text.strip(), prompt_words(text)
            key = " ".join(words)
            reason = self._drop_reason(text, complete, words, key)
            if reason:
                self.dropped[reason] += 1
            else:
                self._seen.add(key)
                self.kept.append(text)
        return len(self.kept) - before

    def _drop_reason(self, text: str, complete: bool, words: list[str], key: str) -> str | None:
        if not complete:
            return "unfinished"
        if len(words) < MIN_WORDS:
            return "too short"
        if key in self._seen:
            return "repeated"
        if self.exclude.contains_eval_prompt([{"role": "user", "content": text}]):
            return "evaluation prompt"
        return None


def write_requests(
    model: nn.Module,
    tokenizer: Any,
    count: int,
    cache_file: Path,
    seed: int,
    stop_ids: Sequence[int],
    batch_size: int,
    exclude: EvalFilter,
    report: Callable[[str], None],
) -> list[list[Message]]:
    """`count` single-turn conversations whose user request the target wrote, in a seeded order."""
    prefix = user_turn_prefix(tokenizer)
    batches: list[list[list[int]]] = [record["requests"] for record in read_records(cache_file)]

    def decoded(batch: list[list[int]]) -> list[tuple[str, bool]]:
        ends = [bool(ids) and ids[-1] in stop_ids for ids in batch]
        return [
            (tokenizer.decode(ids[:-1] if end else ids), end) for ids, end in zip(batch, ends, strict=True)
        ]

    keeper = RequestKeeper(count, exclude)
    for batch in batches:
        keeper.add(decoded(batch))
    progress = Progress("self-written prompts", count, report, unit="prompts", done=len(keeper.kept))
    # A model that rarely ends a request (not chat-tuned, or another template) would sample for ever.
    max_batches = math.ceil(MAX_WRITTEN_PER_KEPT * count / batch_size)
    device = next(model.parameters()).device
    with open(cache_file, "a") as cache:
        while len(keeper.kept) < count:
            if len(batches) >= max_batches:
                kept, written = len(keeper.kept), sum(map(len, batches))
                raise EaglexError(
                    f"--self-prompts: the target finished only {kept} usable requests of {written} written "
                    f"({_summary(keeper.dropped)}): is it an instruction-tuned chat model? Pass fewer "
                    "--self-prompts or other --data"
                )
            generator = torch.Generator(device).manual_seed(_batch_seed(seed, len(batches)))
            batches.append(
                sampled_answers(model, [prefix] * batch_size, stop_ids, MAX_PROMPT_TOKENS, generator)
            )
            cache.write(json.dumps({"batch": len(batches) - 1, "requests": batches[-1]}) + "\n")
            cache.flush()
            progress.update(keeper.add(decoded(batches[-1])))
    dropped = keeper.dropped
    considered = count + sum(dropped.values())  # the requests after the last one kept were not needed
    report(f"self-written prompts: {count} kept of the first {considered} written ({_summary(dropped)})")
    return [[{"role": "user", "content": text}] for text in keeper.kept]


def _summary(dropped: Counter[str]) -> str:
    return "dropped: " + (", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none")
