"""Runs decoding methods over benchmark sets, interleaved prompt by prompt so that every method sees the
same machine state (these machines are noisy: only ratios measured in one run are worth comparing)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eaglex.bench.datasets import Prompt
from eaglex.bench.methods import Decode, Method


@dataclass
class Totals:
    """One method on one set: sums over prompts, so rates are weighted by tokens, not by prompt."""

    tokens: int = 0  # new tokens after the first (those the decode time covers)
    seconds: float = 0.0
    passes: int = 0
    weight_bytes: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    prompts: int = 0
    same_as_reference: int = 0  # prompts whose output equals the reference method's, token for token

    def add(self, decode: Decode, same: bool) -> None:
        self.tokens += max(len(decode.tokens) - 1, 0)
        self.seconds += decode.decode_seconds
        self.passes += decode.passes
        self.weight_bytes += decode.weight_bytes
        self.draft_seconds += decode.draft_seconds
        self.verify_seconds += decode.verify_seconds
        self.prompts += 1
        self.same_as_reference += same

    def summary(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "tokens_per_second": self.tokens / seconds,
            "acceptance_length": self.tokens / max(self.passes, 1),
            "weight_GB_per_second": self.weight_bytes / seconds / 1e9,
            "draft_share": self.draft_seconds / seconds,
            "verify_share": self.verify_seconds / seconds,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "prompts": self.prompts,
            "same_output_as_reference": self.same_as_reference,
        }


@dataclass
class Progress:
    total: int
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        bar = "#" * (30 * self.done // self.total)
        end = "\n" if self.done == self.total else ""
        print(
            f"\r[{bar:<30}] {self.done}/{self.total} {label:<24} eta {eta / 60:5.1f} min",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def run_suite(
    encode: Callable[[str, bool], list[int]],
    methods: Sequence[Method],
    prompts: dict[str, list[Prompt]],
    max_new_tokens: int,
    warmup: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Returns {set: {method: summary}}. The first method is the reference whose outputs the others are
    compared with (at temperature 0 every exact method must reproduce it), unless a method names its own
    `reference`, which must run before it."""
    if warmup:  # first calls pay for allocations and page faults; keep them out of every number
        first = next(iter(prompts.values()))[0]
        for method in methods:
            method(encode(first.text, first.chat), 8)
    progress = Progress(sum(len(p) for p in prompts.values()) * len(methods))
    results: dict[str, dict[str, Totals]] = {}
    for name, items in prompts.items():
        totals = results.setdefault(name, {m.name: Totals() for m in methods})
        for prompt in items:
            ids = encode(prompt.text, prompt.chat)
            outputs: dict[str, list[int]] = {}
            for method in methods:
                decode = method(ids, max_new_tokens)
                outputs[method.name] = decode.tokens
                reference = outputs.get(getattr(method, "reference", None) or methods[0].name)
                totals[method.name].add(decode, decode.tokens == reference)
                progress.step(f"{name} {method.name}")
    return {name: {m: t.summary() for m, t in per_method.items()} for name, per_method in results.items()}
