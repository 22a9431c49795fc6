"""What a decoding round's parts cost on this machine: target passes over T tree nodes and drafter calls,
each timed from the state a round meets (`eaglex tune` combines them with measured acceptance)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import run_target


def median_seconds(call, reps: int, before=None) -> float:
    """Median time of call(); `before` (untimed) runs ahead of each call, to set up the state it meets."""
    call()  # warm-up
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mean_context(prompt_lengths: list[int], new_tokens: int, most: int) -> int:
    """The cache length a round meets on average while these prompts are decoded (prompt plus half the new
    tokens), at most `most`. Attention reads the whole cache, so costs are timed at this length."""
    return int(min(statistics.mean(prompt_lengths) + new_tokens / 2, most))


def target_pass_call(engine: Engine, size: int, context: int) -> Callable[[], None]:
    """One target pass over `size` tree nodes with `context` tokens in the cache, ready to time."""
    tokens, positions, rows = np.ones(size, np.int64), np.full(size, context), np.arange(size)
    mask = np.ones((size, context + size), bool)
    return lambda: run_target(engine.target, tokens, positions, context, mask, rows)


def verify_cost(engine: Engine, sizes: tuple[int, ...], reps: int, context: int) -> dict[int, float]:
    """Seconds per target pass over T tree nodes, T in sizes, with `context` tokens in the cache."""
    return {size: median_seconds(target_pass_call(engine, size, context), reps) for size in sizes}


def draft_cost(
    engine: Engine, prompt: list[int], top_ks: tuple[int, ...], reps: int, context: int, max_depth: int
) -> tuple[dict[tuple[int, int], float], dict[int, float]]:
    """Seconds to grow a tree of each (top_k, depth) after `prompt` (depth - 1 drafter calls plus the host
    work between them: embedding rows, masks, candidate bookkeeping), and per top_k the seconds of the
    drafter call that commits a round's accepted rows (two, a typical round on a CPU-sized tree).

    Each timed call follows a one-token target pass, as in decoding: drafter calls measured alone ran at
    half the time they take in a decoding round (caches and thread wake-ups are then cold)."""
    drafter = engine.drafter
    assert drafter is not None
    target_pass = target_pass_call(engine, 1, context)

    ids = np.asarray(prompt, np.int64)
    features = np.zeros((len(prompt), 3 * drafter.embeddings.shape[1]), np.float32)
    grow, commit = {}, {}
    for k in top_ks:
        drafter.reset()
        drafter.extend(ids, features, k)
        committed = drafter.snapshot()

        def commit_two_rows(k: int = k, committed=committed) -> None:
            drafter.restore(committed)
            drafter.extend(ids[:2], features[:2], k)

        commit[k] = median_seconds(commit_two_rows, reps, before=target_pass)
        drafter.restore(committed)
        for depth in range(1, max_depth + 1):
            grow[k, depth] = median_seconds(
                lambda k=k, d=depth: drafter.grow(prompt[-1], k, d), reps, before=target_pass
            )
    return grow, commit
