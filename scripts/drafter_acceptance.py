"""Acceptance of an artifact's drafter on the benchmark prompts, for several tree shapes at once.

Greedy verification accepts the longest prefix of the target's greedy continuation that lies on a tree path,
so one greedy continuation per prompt and one tree grown per position give the exact acceptance of every
smaller tree shape (eaglex/bench/tune.py `acceptance`), without decoding once per shape:
    python scripts/drafter_acceptance.py ARTIFACT [--limits mt-bench=80,humaneval=20,gsm8k=20]
Prints a markdown table of mean acceptance length (tokens per target pass, bonus included) per set.
"""

from __future__ import annotations

import argparse
import json
import time

from eaglex.bench.datasets import load_prompts
from eaglex.bench.tune import acceptance
from eaglex.runtime.engine import Engine

# (top_k, depth, total_tokens): a chain, two CPU-sized trees, the default, and the GPU-sized tree of EAGLE-3.
SHAPES = ((1, 5, 6), (4, 3, 8), (4, 4, 12), (8, 5, 24), (8, 6, 60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--limits", default="mt-bench=80,humaneval=20,gsm8k=20")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    top_ks = tuple(sorted({k for k, _, _ in SHAPES}))
    sizes = tuple(sorted({t for _, _, t in SHAPES}))
    depth = max(d for _, d, _ in SHAPES)
    results = {}
    started = time.perf_counter()
    for spec in args.limits.split(","):
        name, limit = spec.split("=")
        prompts = load_prompts(name, int(limit))

        def progress(line: str, name: str = name) -> None:
            print(f"[{time.perf_counter() - started:6.0f}s] {name}: {line}", flush=True)

        accepted = acceptance(engine, prompts, top_ks, sizes, args.max_new_tokens, progress, depth)
        results[name] = {f"{k}/{d}/{t}": 1 + accepted[k, d, t] for k, d, t in SHAPES}
    print("\n| set | " + " | ".join(f"top_k {k}, depth {d}, {t} nodes" for k, d, t in SHAPES) + " |")
    print("|---" * (len(SHAPES) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    if args.out:
        with open(args.out, "w") as f:
            record = {"artifact": args.artifact, "max_new_tokens": args.max_new_tokens, **results}
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
