"""Acceptance length (tokens per target pass) per benchmark set with and without prompt lookup.

    python experiments/ngram_acceptance.py ARTIFACT [--limit 3] [--new-tokens 96] [--ngram 8]
        [--top-k K --depth D --total-tokens T] [--threads 1] [--runtime python|native]

Greedy; per prompt: plain decoding, EAGLE-3, EAGLE-3 + lookup, plain + lookup (runtime/ngram.py), methods
interleaved prompt by prompt. Each output is checked against plain decoding's. Tokens/s (decoding only)
are the loop's own decode time (GenerationStats, the same clock in both runtimes); the acceptance lengths
are deterministic.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

SETS = ("mt-bench", "humaneval", "gsm8k", "xsum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--ngram", type=int, default=8)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--total-tokens", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", default="python", help="python or native (libeaglex)")
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads, checksums=False, runtime=args.runtime)
    tree = {"top_k": args.top_k, "depth": args.depth, "total_tokens": args.total_tokens}
    methods = {
        "plain": {"speculative": False},
        "EAGLE-3": {"speculative": True},
        "EAGLE-3 + lookup": {"speculative": True, "ngram": args.ngram},
        "plain + lookup": {"speculative": False, "ngram": args.ngram},
    }
    config0 = engine.default_config(**tree)
    print(f"tree {config0.top_k}/{config0.depth}/{config0.total_tokens}, lookup up to {args.ngram} tokens")
    print("| set | " + " | ".join(f"{m} tau (tok/s)" for m in methods) + " | same as plain |")
    print("|---|" + "---|" * (len(methods) + 1))
    for name in SETS:
        taus, rates = defaultdict(list), defaultdict(list)
        same = 0
        prompts = load_prompts(name, args.limit)
        for prompt in prompts:
            ids = engine.encode(prompt.text, prompt.chat)
            outputs = {}
            for method, settings in methods.items():
                stats = GenerationStats()
                config = engine.default_config(max_new_tokens=args.new_tokens, **tree, **settings)
                outputs[method] = [t for chunk in engine.generate(ids, config, stats) for t in chunk]
                taus[method].append(stats.acceptance_length)
                rates[method].append(stats.tokens_per_second)
            same += all(out == outputs["plain"] for out in outputs.values())
        cells = [f"{statistics.mean(taus[m]):.2f} ({statistics.mean(rates[m]):.1f})" for m in methods]
        print(f"| {name} | " + " | ".join(cells) + f" | {same}/{len(prompts)} |", flush=True)


if __name__ == "__main__":
    main()
