"""Speculative vs plain greedy output of an artifact, prompt by prompt:

    python experiments/check_lossless.py ARTIFACT [--prompts 8] [--new-tokens 64] [--threads 2]

Decodes the chat prompts of tests/data/prompts.json both ways with the artifact's default tree and prints
whether the outputs match (and where they first differ) and each one's tokens/s.
"""

from __future__ import annotations

import time

import harness

from eaglex.runtime.engine import Engine


def compare(engine: Engine, prompts: int, new_tokens: int) -> int:
    """Prints one line per prompt; returns how many gave identical output."""
    same = 0
    for text in harness.chat_prompts(prompts):
        ids = engine.encode(text, chat=True)
        outputs, rates = [], []
        for speculative in (True, False):
            config = engine.default_config(max_new_tokens=new_tokens, speculative=speculative)
            started = time.perf_counter()
            outputs.append([t for chunk in engine.generate(ids, config) for t in chunk])
            rates.append(len(outputs[-1]) / (time.perf_counter() - started))
        spec, plain = outputs
        differ = next((i for i, (a, b) in enumerate(zip(spec, plain, strict=False)) if a != b), None)
        if differ is None and len(spec) != len(plain):
            differ = min(len(spec), len(plain))
        same += differ is None
        where = "identical" if differ is None else f"first differs at token {differ}"
        print(f"{where}: EAGLE-3 {rates[0]:.1f}, plain {rates[1]:.1f} tok/s", flush=True)
    print(f"{same}/{prompts} identical")
    return same


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    print(f"{args.artifact}: {engine.manifest.target.dtype} on {engine.device}")
    compare(engine, args.prompts, args.new_tokens)


if __name__ == "__main__":
    main()
