"""`generate()` against scripted graphs: a fake target and drafter behind the `GraphSession` protocol.

The fake target is a language model whose next token is a pure function of the tokens it can see: it
reads them from its own KV cache (the slots its mask allows), so a wrong compaction, position or mask
changes the output. Its feature for a row is the running state after that row's token, which lets the fake
drafter predict the target exactly, and then be made wrong on purpose, in a scripted way. Pure numpy, no
graphs: the whole file runs in well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from eaglex.runtime.draft import EagleDrafter
from eaglex.runtime.generate import GenerationConfig, GenerationStats, generate

VOCAB, MODULUS = 50, 10007


def step(state: int, token: int) -> int:
    """The target's running state after one more token."""
    return (state * 31 + token + 7) % MODULUS


def next_token(state: int) -> int:
    return state % VOCAB


def reference(prompt: list[int], new_tokens: int, stop: set[int] = frozenset()) -> list[int]:
    """Plain greedy decoding of the fake target, written out directly."""
    state, out = 0, []
    for token in prompt:
        state = step(state, token)
    while len(out) < new_tokens:
        out.append(next_token(state))
        if out[-1] in stop:
            break
        state = step(state, out[-1])
    return out


class FakeTarget:
    """A GraphSession that checks its inputs and computes from what its cache and mask let each row see."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slots = np.full(capacity, -1, np.int64)  # the token held in each cache slot
        self.keeps: list[tuple[int, list[int]]] = []
        self.calls: list[int] = []  # cache_len of every run

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        tokens, positions = feeds["input_ids"][0], feeds["position_ids"][0]
        rows = len(tokens)
        assert cache_len + rows <= self.capacity, "wrote past the KV cache"
        assert mask.shape == (rows, cache_len + rows)
        assert mask[np.arange(rows), cache_len + np.arange(rows)].all(), "a row must see itself"
        self.calls.append(cache_len)
        self.slots[cache_len : cache_len + rows] = tokens
        states = np.zeros(rows, np.int64)
        for s in range(rows):
            visible = np.flatnonzero(mask[s])
            assert positions[s] == len(visible) - 1, "RoPE position is not the row's depth in its sequence"
            assert (self.slots[visible] >= 0).all(), "attends to a slot that holds nothing"
            state = 0
            for token in self.slots[visible]:
                state = step(state, int(token))
            states[s] = state
        logits = np.zeros((rows, VOCAB), np.float32)
        logits[np.arange(rows), states % VOCAB] = 10.0
        return {
            "logits": logits[feeds["logit_index"]][None],
            "features": states.astype(np.float32)[None, :, None],
        }

    def keep(self, start: int, slots: np.ndarray) -> None:
        self.keeps.append((start, [int(s) for s in slots]))
        self.slots[start : start + len(slots)] = self.slots[slots].copy()


class FakeDrafter:
    """The drafter's GraphSession: row t reads the target's state at t (or its own hidden) and token t+1,
    and ranks the target's true next token at `rank(state)` among its top-k, or leaves it out (rank None)."""

    def __init__(self, capacity: int, rank=lambda state: 0) -> None:
        self.capacity = capacity
        self.rank = rank

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        tokens = feeds["input_embeds"][0, :, 0].astype(np.int64)  # the embedding table is the identity
        given = feeds["features"] if feeds["features"].shape[1] else feeds["hidden"]
        assert given.shape[1] == len(tokens) and cache_len + len(tokens) <= self.capacity
        assert mask.shape == (len(tokens), cache_len + len(tokens))
        states = np.array([step(int(s), int(t)) for s, t in zip(given[0, :, 0], tokens, strict=True)])
        k = int(feeds["top_k"][0])
        ids = np.zeros((len(states), k), np.int64)
        for row, state in enumerate(states):
            truth, rank = next_token(int(state)), self.rank(int(state))
            wrong = [(truth + 1 + i) % VOCAB for i in range(k)]
            ids[row] = wrong if rank is None or rank >= k else [*wrong[:rank], truth, *wrong[rank : k - 1]]
        logprobs = np.tile(-0.1 * np.arange(1, k + 1, dtype=np.float32), (len(states), 1))
        rows = feeds["logit_index"]
        return {
            "topk_logprobs": logprobs[rows][None],
            "topk_ids": ids[rows][None],
            "hidden_out": states.astype(np.float32)[None, :, None],
        }

    def keep(self, start: int, slots: np.ndarray) -> None:
        raise AssertionError("the drafter's cache is never compacted: its tree rows are scratch")


def decode(prompt, config, capacity=256, rank=lambda state: 0, speculative=True, stop=frozenset()):
    target = FakeTarget(capacity)
    drafter = None
    if speculative:
        drafter = EagleDrafter(FakeDrafter(capacity, rank), np.arange(VOCAB, dtype=np.float32)[:, None], 1)
    stats = GenerationStats()
    chunks = list(generate(target, drafter, prompt, config, set(stop), stats))
    return [t for chunk in chunks for t in chunk], chunks, stats, target


PROMPT = [3, 14, 15, 9, 26, 5]
SCRIPTS = {
    "perfect": lambda state: 0,
    "second choice": lambda state: 1,
    "mixed": lambda state: [0, 1, 2, None][state % 4],
    "never right": lambda state: None,
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(("top_k", "depth", "total_tokens"), [(1, 4, 5), (2, 3, 6), (4, 3, 12), (3, 5, 24)])
def test_speculative_equals_plain_and_the_reference(script, top_k, depth, total_tokens):
    config = GenerationConfig(max_new_tokens=40, top_k=top_k, depth=depth, total_tokens=total_tokens)
    tokens, chunks, stats, _ = decode(PROMPT, config, rank=SCRIPTS[script])
    plain, _, plain_stats, _ = decode(PROMPT, config, speculative=False)
    assert tokens == plain == reference(PROMPT, 40)
    assert stats.new_tokens == 40 and stats.stop_reason == "length"
    assert stats.verified_tokens == 39 == sum(stats.accepted_lengths)  # the first token comes from prefill
    assert stats.accepted_lengths == [len(c) for c in chunks[1:]]
    assert plain_stats.accepted_lengths == [1] * 39


def test_acceptance_follows_the_drafter():
    config = GenerationConfig(max_new_tokens=41, top_k=1, depth=4, total_tokens=5)
    _, _, perfect, _ = decode(PROMPT, config, rank=SCRIPTS["perfect"])
    assert perfect.accepted_lengths == [5] * 8  # four drafts and the bonus token every pass
    assert perfect.acceptance_length == 5.0
    _, _, never, _ = decode(PROMPT, config, rank=SCRIPTS["never right"])
    assert never.accepted_lengths == [1] * 40
    # A second choice is accepted only where the tree holds it: a chain of top-1 drafts never does.
    _, _, second, _ = decode(PROMPT, config, rank=SCRIPTS["second choice"])
    assert second.accepted_lengths == [1] * 40
    wide = GenerationConfig(max_new_tokens=41, top_k=2, depth=4, total_tokens=9)
    _, _, second, _ = decode(PROMPT, wide, rank=SCRIPTS["second choice"])
    assert max(second.accepted_lengths) > 1


def test_compaction_moves_the_accepted_path_next_to_the_context():
    config = GenerationConfig(max_new_tokens=30, top_k=3, depth=3, total_tokens=10)
    tokens, chunks, stats, target = decode(PROMPT, config, rank=SCRIPTS["mixed"])
    assert len(target.keeps) == stats.target_passes == len(chunks) - 1
    cache_len = len(PROMPT)
    for i, ((start, slots), new) in enumerate(zip(target.keeps, chunks[1:], strict=True)):
        assert start == cache_len  # the committed context ends where the verified tree began
        assert slots[0] == cache_len and slots == sorted(slots)  # the root, then the accepted path
        # One slot per accepted token; the last pass may emit fewer, cut at the length budget.
        assert len(slots) == len(new) if i < len(target.keeps) - 1 else len(slots) >= len(new)
        cache_len += len(slots)
    # Every committed slot holds the sequence's token at that position: prompt, then all but the last token.
    committed = PROMPT + tokens[:-1]
    assert target.slots[: len(committed)].tolist() == committed
    assert target.calls[0] == 0 and target.calls[1:] == [start for start, _ in target.keeps]


@pytest.mark.parametrize("speculative", [True, False])
def test_stop_token_ends_the_answer_even_inside_an_accepted_run(speculative):
    free = reference(PROMPT, 40)
    stop = {free[9]}
    config = GenerationConfig(max_new_tokens=40, top_k=1, depth=5, total_tokens=6)
    tokens, _, stats, _ = decode(PROMPT, config, speculative=speculative, stop=stop)
    assert tokens == reference(PROMPT, 40, stop) and tokens[-1] in stop
    assert len(tokens) == free.index(free[9]) + 1
    assert stats.stop_reason == "stop token"


def test_a_stop_token_from_prefill_ends_at_once():
    first = reference(PROMPT, 1)
    tokens, chunks, stats, target = decode(PROMPT, GenerationConfig(max_new_tokens=10), stop=set(first))
    assert tokens == first and chunks == [first]
    assert stats.stop_reason == "stop token" and stats.target_passes == 0 and target.calls == [0]


@pytest.mark.parametrize("budget", [1, 2, 7, 13])
def test_budget_is_exact_when_a_pass_would_overshoot(budget):
    config = GenerationConfig(max_new_tokens=budget, top_k=1, depth=5, total_tokens=6)
    tokens, _, stats, _ = decode(PROMPT, config, rank=SCRIPTS["perfect"])
    assert tokens == reference(PROMPT, budget)
    assert stats.stop_reason == "length" and stats.new_tokens == budget


@pytest.mark.parametrize("speculative", [True, False])
@pytest.mark.parametrize("room", [1, 2, 5, 11])
def test_context_limit_stops_within_the_cache(speculative, room):
    capacity = len(PROMPT) + room
    config = GenerationConfig(max_new_tokens=100, top_k=2, depth=4, total_tokens=8)
    tokens, _, stats, _ = decode(PROMPT, config, capacity=capacity, speculative=speculative)
    assert tokens == reference(PROMPT, room)  # FakeTarget asserts that no pass wrote past the cache
    assert stats.stop_reason == "context limit"
