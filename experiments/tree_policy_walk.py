"""Draft-tree policies on paper: rounds walked over greedy continuations, each policy's tokens per pass and
speed over plain decoding under a cost model, before any of them is built into the loop.

    python experiments/tree_policy_walk.py ARTIFACT [--set mt-bench] [--prompts 20] [--ngram 8]
        [--row-cost 0.06] [--call-cost 0.065]

For every position of each prompt's greedy continuation the drafter's pool is grown to full depth once
per top_k (as `eaglex tune` does). A policy then decodes the continuation round by round (bench/tree_walk.py
`walk`, which tune scores shapes with): at the current position it builds its tree from the pool (a fixed
shape, or caps with probability cuts), grafts prompt lookup's branch, accepts the longest prefix of the
continuation the tree holds, and moves past it plus the bonus token. So each policy visits the positions
it would really reach. A round costs 1 - row_cost + row_cost * rows verified plus call_cost per drafter
call (the extend that commits a round is one), in plain passes; the defaults are the fourth sitting's
profile of this CPU (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import itertools

import harness
import numpy as np

from eaglex.bench.datasets import load_prompts
from eaglex.bench.tree_walk import walk
from eaglex.bench.tune import greedy_trace
from eaglex.runtime.engine import Engine
from eaglex.runtime.tree import DraftTreeBuilder

MAX_DEPTH = 8
FIXED = [(2, 2, 4), (2, 2, 3), (2, 3, 4), (4, 1, 2), (2, 3, 6), (4, 2, 6)]  # top_k, depth, total_tokens
GRID = itertools.product((2, 4), (6, 8), (0.02, 0.05, 0.1), (0.1, 0.3))  # top_k, cap, path p, grow p
CUTS = [(k, t - 1, t, p, g) for k, t, p, g in GRID]


def pools(engine: Engine, prompt, new_tokens: int, top_ks) -> tuple[np.ndarray, int, dict]:
    """The prompt's greedy sequence, where its continuation starts, and per top_k the pool at every
    position of the continuation, grown to MAX_DEPTH."""
    trace = greedy_trace(engine, prompt, new_tokens)
    sequence, start, features = trace.sequence, trace.prompt_len, trace.features
    drafter = engine.drafter
    assert drafter is not None
    grown: dict[int, list[DraftTreeBuilder]] = {}
    for k in top_ks:
        drafter.reset()
        drafter.extend(sequence[1 : start + 1], features[:start], k)
        grown[k] = []
        for position in range(start, len(sequence) - 1):
            grown[k].append(drafter.grow(int(sequence[position]), k, MAX_DEPTH))
            drafter.extend(sequence[position + 1 : position + 2], features[position : position + 1], k)
    return sequence, start, grown


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--set", default="mt-bench")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--ngram", type=int, default=8)
    parser.add_argument("--row-cost", type=float, default=0.06)
    parser.add_argument("--call-cost", type=float, default=0.065)
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads, checksums=False, runtime="python")
    policies = FIXED + CUTS
    totals = {policy: np.zeros(4) for policy in policies}
    for prompt in load_prompts(args.set, limit=args.prompts):
        sequence, start, grown = pools(engine, prompt, args.new_tokens, {p[0] for p in policies})
        for policy in policies:
            key = policy if len(policy) == 5 else (*policy, 0.0, 0.0)
            rounds, accepted, rows, levels = walk(sequence, start, grown[policy[0]], key, args.ngram)
            cost = rounds * (1 - args.row_cost) + args.row_cost * rows + args.call_cost * levels
            totals[policy] += (rounds + accepted, rounds, rows, cost)
    print(f"{args.artifact.name}, {args.set} x{args.prompts}, lookup {args.ngram}, cost model: a row "
          f"{args.row_cost}, a drafter call {args.call_cost} plain passes")  # fmt: skip
    print("| policy (top_k, depth, total[, path p, grow p]) | tokens per pass | rows per pass | x plain |")
    print("|---|---|---|---|")
    for policy, (tokens, passes, rows, cost) in sorted(totals.items(), key=lambda kv: -kv[1][0] / kv[1][3]):
        print(f"| {policy} | {tokens / passes:.2f} | {rows / passes:.2f} | {tokens / cost:.3f} |")


if __name__ == "__main__":
    main()
