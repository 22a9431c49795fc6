"""Draft-tree policies on paper: rounds walked over greedy continuations, each policy's tokens per pass and
speed over plain decoding under a cost model, before any of them is built into the loop.

    python experiments/tree_policy_walk.py ARTIFACT [--set mt-bench] [--prompts 20] [--ngram 8]
        [--row-cost 0.06] [--call-cost 0.065]

For every position of each prompt's greedy continuation the drafter's pool is grown to full depth once
per top_k (by `eaglex tune`'s own `acceptance`). A policy then decodes the continuation round by round
(bench/tree_walk.py `walk`, which tune scores shapes with): at the current position it builds its tree
from the pool (a fixed shape, or caps with probability cuts), grafts prompt lookup's branch, accepts the
longest prefix of the continuation the tree holds, and moves past it plus the bonus token. So each policy
visits the positions it would really reach. A round costs 1 - row_cost + row_cost * rows verified plus
call_cost per drafter call (the extend that commits a round is one), in plain passes; the defaults are
the fourth sitting's profile of this CPU (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import itertools

import harness
import numpy as np

from eaglex.bench.datasets import load_prompts
from eaglex.bench.tree_walk import Pools, walk
from eaglex.bench.tune import acceptance
from eaglex.runtime.engine import Engine

FIXED = [(2, 2, 4), (2, 2, 3), (2, 3, 4), (4, 1, 2), (2, 3, 6), (4, 2, 6)]  # top_k, depth, total_tokens
GRID = itertools.product((2, 4), (6, 8), (0.02, 0.05, 0.1), (0.1, 0.3))  # top_k, cap, path p, grow p
CUTS = [(k, t - 1, t, p, g) for k, t, p, g in GRID]


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
    pools = Pools()  # grown as tune grows them
    top_ks = tuple(sorted({p[0] for p in policies}))
    prompts = load_prompts(args.set, limit=args.prompts)
    acceptance(engine, prompts, top_ks, (2,), args.new_tokens, lambda _: None, on_pool=pools.add)
    for policy in policies:
        key = policy if len(policy) == 5 else (*policy, 0.0, 0.0)
        for sequence, start, grown in pools.runs[policy[0]]:
            rounds, accepted, rows, levels = walk(sequence, start, grown, key, args.ngram)
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
