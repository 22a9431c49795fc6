"""Where `tune`'s verify prediction misses: target passes timed inside decoding against timed alone.

    python experiments/verify_time_in_rounds.py ARTIFACT [--top-k 4 --depth 2 --total-tokens 8] [--threads 2]
Decodes `tune`'s calibration prompts with one tree shape and records every full-size verify pass (its time
and cache length), then times the same pass as `tune` does (back to back, at the prompts' mean cache
length), after a drafter call each (whose threads still spin, as in a round), and after a drafter call at
the cache lengths decoding met. Prints mean, median, p10 and p90 of each, in ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np

from eaglex.bench import round_costs, tune
from eaglex.runtime.engine import Engine

REPS = 150


def show(name: str, seconds: list[float]) -> None:
    ms, n = sorted(1e3 * s for s in seconds), len(seconds)
    print(
        f"{name}: n={n}, mean {statistics.mean(ms):.1f}, median {statistics.median(ms):.1f}, "
        f"p10 {ms[n // 10]:.1f}, p90 {ms[9 * n // 10]:.1f} ms"
    )


def timed(call: Callable[[], None], before: Callable[[], None] | None = None) -> float:
    if before is not None:
        before()
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--total-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    drafter, size = engine.drafter, args.total_tokens
    assert drafter is not None, "the artifact needs a drafter"
    prompts = tune.calibration_prompts(4)
    lengths = [len(engine.encode(p.text, p.chat)) for p in prompts]
    context = round_costs.mean_context(lengths, args.new_tokens, engine.target.capacity - size)

    in_rounds: list[tuple[float, int]] = []
    run = engine.target.run

    def recorded(feeds: dict[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        out = run(feeds, cache_len, mask)
        if feeds["input_ids"].shape[1] == size:  # a tree cut short near the end is another pass
            in_rounds.append((time.perf_counter() - started, cache_len))
        return out

    engine.target.run = recorded  # type: ignore[method-assign]
    tune.decode(engine, prompts, tune.Shape(args.top_k, args.depth, size, 0.0), args.new_tokens)
    engine.target.run = run  # type: ignore[method-assign]
    caches = sorted(c for _, c in in_rounds)
    print(f"cache length in rounds: mean {statistics.mean(caches):.0f}; tune times at {context}")
    show("verify in decoding rounds", [s for s, _ in in_rounds])

    drafter.reset()
    width = 3 * drafter.embeddings.shape[1]
    drafter.extend(np.arange(1, 33, dtype=np.int64), np.zeros((32, width), np.float32), args.top_k)

    def drafter_call() -> None:
        drafter.grow(1, args.top_k, 2)

    alone = round_costs.target_pass_call(engine, size, context)
    show("back to back (tune)", [timed(alone) for _ in range(REPS)])
    show("after a drafter call", [timed(alone, drafter_call) for _ in range(REPS)])
    at_lengths = [caches[i * len(caches) // REPS] for i in range(REPS)]
    passes = [round_costs.target_pass_call(engine, size, c) for c in at_lengths]
    show("after a drafter call, at the rounds' cache lengths", [timed(p, drafter_call) for p in passes])


if __name__ == "__main__":
    main()
