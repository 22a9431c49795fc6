"""Decoding speed of several artifacts of one model, interleaved prompt by prompt in one process:

    python experiments/compare_artifacts.py ARTIFACT... [--prompts 4] [--rounds 2] [--tokens 64]
        [--tree 8,1,6] [--threads 2]

For each artifact: plain and EAGLE-3 (tree top_k,depth,total_tokens) tokens/s, weight bandwidth and new
tokens per target pass over the chat prompts of tests/data/prompts.json, and whether every artifact
printed the same tokens. Made to compare export variants (graph rewrites, precisions) where only the ratio
in one run means anything.
"""

from __future__ import annotations

from pathlib import Path

import harness

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tree", default="8,1,6", help="top_k,depth,total_tokens of the EAGLE-3 runs")
    args = parser.parse_args()
    top_k, depth, total_tokens = map(int, args.tree.split(","))
    engines = {path: Engine.load(path, threads=args.threads, device="cpu") for path in args.artifacts}
    prompts = harness.chat_prompts(args.prompts)
    totals = {(path, mode): [0, 0.0, 0, 0, 0] for path in engines for mode in ("plain", "EAGLE-3")}
    outputs: dict[tuple[int, str], set[tuple[int, ...]]] = {}
    orders = iter(harness.rotations(list(engines), args.rounds * len(prompts)))  # none always runs first
    for _ in range(args.rounds):
        for i, text in enumerate(prompts):
            for path in next(orders):
                engine = engines[path]
                for mode in ("plain", "EAGLE-3"):
                    config = engine.default_config(
                        max_new_tokens=args.tokens,
                        speculative=mode == "EAGLE-3",
                        top_k=top_k,
                        depth=depth,
                        total_tokens=total_tokens,
                    )
                    stats = GenerationStats()
                    chunks = engine.generate(engine.encode(text, chat=True), config, stats)
                    tokens = [t for chunk in chunks for t in chunk]
                    outputs.setdefault((i, mode), set()).add(tuple(tokens))
                    total = totals[path, mode]
                    total[0] += stats.new_tokens
                    total[1] += stats.decode_seconds
                    total[2] += engine.weight_bytes_read(stats)
                    total[3] += stats.verified_tokens
                    total[4] += stats.target_passes
    print("| artifact | mode | tok/s | GB/s of weights | tokens per target pass |\n|---|---|---|---|---|")
    for (path, mode), (tokens, seconds, weight_bytes, verified, passes) in totals.items():
        rate, bandwidth = tokens / seconds, weight_bytes / seconds / 1e9
        print(f"| {path} | {mode} | {rate:.1f} | {bandwidth:.2f} | {verified / passes:.2f} |")
    same = sum(len(variants) == 1 for variants in outputs.values())
    print(f"same tokens from every artifact: {same}/{len(outputs)} runs")


if __name__ == "__main__":
    main()
