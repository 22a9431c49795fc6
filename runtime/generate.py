"""The draft-verify loop. Plain decoding is the same loop with a tree that holds only its root."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from eaglex.runtime.accept import RowArgmax, accept_greedy, accept_sampling
from eaglex.runtime.backends.base import GraphSession
from eaglex.runtime.draft import EagleDrafter
from eaglex.runtime.ngram import graft, lookup
from eaglex.runtime.sampling import probabilities, sample
from eaglex.runtime.settings import check_generation_settings
from eaglex.runtime.tree import chain_tree


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    sample_top_k: int = 0  # > 0: sample among the k most likely tokens only (the tree's top_k is below)
    seed: int | None = None
    top_k: int = 8  # tree: children per node and frontier width
    depth: int = 5  # tree: levels below the root (drafter calls per round)
    total_tokens: int = 24  # tree: nodes verified per target pass, root included
    # tree, where the drafter is unsure (0: off): a node is verified only if the drafter gives its path at
    # least this probability, and the drafter grows a level deeper only while the likeliest path it has
    # is at least min_grow_probability likely (runtime/tree.py). total_tokens and depth stay the caps.
    min_path_probability: float = 0.0
    min_grow_probability: float = 0.0
    speculative: bool = True
    ngram: int = 0  # prompt lookup: up to this many tokens copied from the context join each tree (0: off)
    # Serving (runtime/scheduler.py): the tree may follow the artifact's tuned tree for the current batch size
    # (manifest tree.by_batch). Engine.default_config sets it where the caller names no tree setting.
    adaptive_tree: bool = False

    def __post_init__(self) -> None:
        check_generation_settings(**self.__dict__)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_passes: int = 0  # verify passes after the prefill
    drafter_calls: int = 0
    verified_tokens: int = 0  # tokens those passes produced (accepted drafts + bonus tokens)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # all of the rounds: drafting + verification + host work between them
    draft_seconds: float = 0.0  # drafter calls (extend and tree growth)
    verify_seconds: float = 0.0  # target passes
    stop_reason: str = ""
    accepted_lengths: list[int] = field(default_factory=list)

    @property
    def acceptance_length(self) -> float:
        """Mean tokens per target pass, bonus token included (tau)."""
        return self.verified_tokens / max(self.target_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.verified_tokens / self.decode_seconds if self.decode_seconds else 0.0


def generate(
    target: GraphSession,
    drafter: EagleDrafter | None,
    prompt: list[int],
    config: GenerationConfig,
    stop_tokens: set[int],
    stats: GenerationStats,
) -> Iterator[list[int]]:
    """Yields the new tokens of each target pass as they are accepted; fills `stats` on the way."""
    rng = np.random.default_rng(config.seed)
    greedy = config.temperature == 0
    n, capacity = len(prompt), target.capacity
    budget = min(config.max_new_tokens, capacity - n)  # the sequence never outgrows the KV cache
    stats.prompt_tokens = n

    clock = time.perf_counter()
    tokens = np.asarray(prompt, np.int64)
    out = run_target(target, tokens, np.arange(n), 0, np.tri(n, dtype=bool), np.array([n - 1]))
    logits = out["logits"][0, -1]
    root = (
        int(logits.argmax())
        if greedy
        else sample(probabilities(logits, config.temperature, config.top_p, config.sample_top_k), rng)
    )
    generated, cache_len = [root], n
    if drafter is not None:
        drafter.reset()
    if drafter is not None and budget > 1 and root not in stop_tokens:
        drafter.extend(np.append(tokens[1:], root), out["features"][0], config.top_k)
    stats.prefill_seconds = time.perf_counter() - clock
    yield [root]

    while generated[-1] not in stop_tokens and len(generated) < budget:
        clock = time.perf_counter()
        tree = chain_tree([root])
        if drafter is not None:
            tree = drafter.propose(
                root,
                config.top_k,
                config.depth,
                config.total_tokens,
                config.min_path_probability,
                config.min_grow_probability,
            )
        if config.ngram:
            tree = graft(tree, lookup(np.asarray(prompt + generated, np.int64), config.ngram))
        tree = tree.truncate(capacity - cache_len)  # parents precede children, so a prefix is a tree

        mask = np.concatenate([np.ones((len(tree.tokens), cache_len), bool), tree.attention_mask()], axis=1)
        drafted = time.perf_counter()
        out = run_target(target, tree.tokens, cache_len + tree.depths, cache_len, mask, np.arange(len(tree)))
        verified = time.perf_counter()
        stats.draft_seconds += drafted - clock
        stats.verify_seconds += verified - drafted
        logits = out["logits"][0]
        if greedy:
            path, bonus = accept_greedy(tree, RowArgmax(logits))
        else:
            path, bonus = accept_sampling(
                tree, logits, config.temperature, config.top_p, rng, config.sample_top_k
            )
        new = _stop_at([*tree.tokens[path[1:]].tolist(), bonus], stop_tokens, budget - len(generated))
        generated += new
        stats.target_passes += 1
        stats.verified_tokens += len(new)
        stats.accepted_lengths.append(len(new))

        target.keep(cache_len, cache_len + path)  # accepted nodes move next to the committed context
        cache_len += len(path)
        root = bonus
        if drafter is not None and generated[-1] not in stop_tokens and len(generated) < budget:
            extending = time.perf_counter()
            drafter.extend(np.asarray(new, np.int64), out["features"][0, path], config.top_k)
            stats.draft_seconds += time.perf_counter() - extending
        stats.decode_seconds += time.perf_counter() - clock
        yield new

    stats.new_tokens = len(generated)
    stats.drafter_calls = drafter.calls if drafter is not None else 0
    if generated[-1] in stop_tokens:
        stats.stop_reason = "stop token"
    elif len(generated) >= config.max_new_tokens:
        stats.stop_reason = "length"
    else:
        stats.stop_reason = "context limit"


def run_target(
    target: GraphSession,
    tokens: np.ndarray,
    positions: np.ndarray,
    cache_len: int,
    mask: np.ndarray,
    logit_rows: np.ndarray,
) -> dict[str, np.ndarray]:
    """One target pass over new rows at `positions` after `cache_len` cached ones; logits for `logit_rows`."""
    feeds = {"input_ids": tokens[None], "position_ids": positions[None], "logit_index": logit_rows}
    return target.run(feeds, cache_len, mask)


def _stop_at(tokens: list[int], stop_tokens: set[int], room: int) -> list[int]:
    """Cuts the accepted tokens after the first stop token and at the length budget."""
    tokens = tokens[:room]
    for i, token in enumerate(tokens):
        if token in stop_tokens:
            return tokens[: i + 1]
    return tokens
