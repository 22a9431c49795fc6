"""EAGLE-3 and plain decoding with the target session's threads spinning between runs (the runtime's
choice) and without, interleaved prompt by prompt in one process:

    python scripts/compare_target_spinning.py ARTIFACT [--tree 2,2,4] [--threads 2]

Prints tokens/s and the share of decoding time spent in the drafter for each; only the ratio in one run
means anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import eaglex.runtime.backends.onnxruntime as ort_backend
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

PROMPTS = Path(__file__).parents[1] / "tests" / "data" / "prompts.json"


def load(artifact: Path, threads: int, target_spins: bool) -> Engine:
    default = ort_backend.session_options

    def options(threads: int, spin: bool = True):  # the drafter asks for spin=False either way
        return default(threads, spin and target_spins)

    ort_backend.session_options = options
    try:
        return Engine.load(artifact, threads=threads, device="cpu")
    finally:
        ort_backend.session_options = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--tree", default="2,2,4", help="top_k,depth,total_tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    top_k, depth, total_tokens = map(int, args.tree.split(","))
    engines = {
        "target spins": load(args.artifact, args.threads, True),
        "no spinning": load(args.artifact, args.threads, False),
    }
    prompts = [p["text"] for p in json.loads(PROMPTS.read_text()) if p["chat"]][:4]
    totals = {(name, mode): [0, 0.0, 0.0] for name in engines for mode in ("plain", "EAGLE-3")}
    for _ in range(args.rounds):
        for text in prompts:
            for name, engine in engines.items():
                for mode in ("plain", "EAGLE-3"):
                    config = engine.default_config(
                        max_new_tokens=64,
                        speculative=mode == "EAGLE-3",
                        top_k=top_k,
                        depth=depth,
                        total_tokens=total_tokens,
                    )
                    stats = GenerationStats()
                    for _ in engine.generate(engine.encode(text, chat=True), config, stats):
                        pass
                    total = totals[name, mode]
                    total[0] += stats.new_tokens
                    total[1] += stats.decode_seconds
                    total[2] += stats.draft_seconds
    for (name, mode), (tokens, seconds, draft) in totals.items():
        print(
            f"{name:12s} {mode:7s} {tokens / seconds:6.1f} tok/s, drafter {draft / seconds:.0%} of decoding"
        )


if __name__ == "__main__":
    main()
