"""Decode tokens/s of artifacts A and B (plain and EAGLE-3), interleaved prompt by prompt.

    python experiments/decode_ab.py ART_A ART_B [--set mt-bench] [--limit 5] [--new-tokens 96] [--ngram 0]

One onnxruntime thread, so every pass runs on the calling thread and its CPU time (time.thread_time)
leaves out the time other processes held the core: on a shared machine the steadier measure. Wall-clock
rates are printed beside it. Each artifact's greedy EAGLE-3 output is checked against its plain output.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--set", default="mt-bench")
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--ngram", type=int, default=0, help="prompt lookup tokens for the EAGLE-3 runs")
    parser.add_argument("--tree", default="1,3,4", help="top_k,depth,total_tokens (default: tune's choice)")
    args = parser.parse_args()
    engines = [Engine.load(a, threads=1, checksums=False) for a in args.artifacts]
    tree = dict(zip(("top_k", "depth", "total_tokens"), map(int, args.tree.split(",")), strict=True))
    modes = {"plain": {"speculative": False}, "EAGLE-3": {"speculative": True, "ngram": args.ngram, **tree}}
    tokens, cpu, wall, weight_bytes = (defaultdict(float) for _ in range(4))
    mismatches = 0
    for prompt in load_prompts(args.set, args.limit):
        reference: dict[int, list[int]] = {}
        for mode, settings in modes.items():
            for i, engine in enumerate(engines):
                ids = engine.encode(prompt.text, prompt.chat)
                config = engine.default_config(max_new_tokens=args.new_tokens, **settings)
                stats = GenerationStats()
                chunks = engine.generate(ids, config, stats)
                out = next(chunks)  # the prefill's token: decoding is timed from here
                started_cpu, started = time.thread_time(), time.perf_counter()
                out += [t for chunk in chunks for t in chunk]
                cpu[i, mode] += time.thread_time() - started_cpu
                wall[i, mode] += time.perf_counter() - started
                tokens[i, mode] += len(out) - 1
                weight_bytes[i, mode] += engine.weight_bytes_read(stats)
                mismatches += out != reference.setdefault(i, out)  # each artifact's own plain output
    print(f"{args.set}, {args.limit} prompts, {args.new_tokens} new tokens, 1 thread, decoding only")
    print(f"tree {args.tree}, lookup {args.ngram}")
    print("| artifact | mode | tok/s (CPU time) | tok/s (wall) | weight GB/s (CPU time) |")
    print("|---|---|---|---|---|")
    for i, artifact in enumerate(args.artifacts):
        for mode in modes:
            rate, gbs = tokens[i, mode] / cpu[i, mode], weight_bytes[i, mode] / cpu[i, mode] / 1e9
            print(f"| {artifact} | {mode} | {rate:.1f} | {tokens[i, mode] / wall[i, mode]:.1f} | {gbs:.1f} |")
    print(f"EAGLE-3 outputs differing from the same artifact's plain output: {mismatches}")


if __name__ == "__main__":
    main()
