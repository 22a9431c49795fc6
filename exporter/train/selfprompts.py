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
from .jsonl import read_records
from .progress import Progress
from .regenerate import sampled_answers

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


def _drop_reason(text: str, complete: bool, key: str, seen: set[str], exclude: EvalFilter) -> str | None:
    if not complete:
        return "unfinished"
    if len(key.split()) < MIN_WORDS:
        return "too short"
    if key in seen:
        return "repeated"
    if exclude.contains_eval_prompt([{"role": "user", "content": text}]):
        return "evaluation prompt"
    return None


def keep_requests(
    texts: Iterable[tuple[str, bool]], count: int, exclude: EvalFilter
) -> tuple[list[str], Counter[str]]:
    """The first `count` usable requests of (text, complete) pairs, and how many were dropped for what.
    Requests that differ only in case and punctuation count as one."""
    kept: list[str] = []
    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    for text, complete in texts:
        if len(kept) == count:
            break
        text, key = text.strip(), " ".join(prompt_words(text))
        reason = _drop_reason(text, complete, key, seen, exclude)
        if reason:
            dropped[reason] += 1
        else:
            seen.add(key)
            kept.append(text)
    return kept, dropped


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

    texts = [text for batch in batches for text in decoded(batch)]
    kept, dropped = keep_requests(texts, count, exclude)
    progress = Progress("self-written prompts", count, report, unit="prompts", done=len(kept))
    # A model that rarely ends a request (not chat-tuned, or another template) would sample for ever.
    max_batches = math.ceil(MAX_WRITTEN_PER_KEPT * count / batch_size)
    device = next(model.parameters()).device
    with open(cache_file, "a") as cache:
        while len(kept) < count:
            if len(batches) >= max_batches:
                raise EaglexError(
                    f"--self-prompts: the target finished only {len(kept)} usable requests of {len(texts)} "
                    f"written ({_summary(dropped)}): is it an instruction-tuned chat model? Pass fewer "
                    "--self-prompts or other --data"
                )
            generator = torch.Generator(device).manual_seed(_batch_seed(seed, len(batches)))
            batches.append(
                sampled_answers(model, [prefix] * batch_size, stop_ids, MAX_PROMPT_TOKENS, generator)
            )
            cache.write(json.dumps({"batch": len(batches) - 1, "requests": batches[-1]}) + "\n")
            cache.flush()
            texts += decoded(batches[-1])
            before = len(kept)
            kept, dropped = keep_requests(texts, count, exclude)
            progress.update(len(kept) - before)
    considered = count + sum(dropped.values())  # the requests after the last one kept were not needed
    report(f"self-written prompts: {count} kept of the first {considered} written ({_summary(dropped)})")
    return [[{"role": "user", "content": text}] for text in kept]


def _summary(dropped: Counter[str]) -> str:
    return "dropped: " + (", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none")
