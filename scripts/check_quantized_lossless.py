"""Speculative vs plain greedy output of a quantized copy of an artifact, prompt by prompt:

    python scripts/check_quantized_lossless.py ARTIFACT OUT --scheme int8 [--activations fp32|int8]
        [--prompts 8] [--new-tokens 64] [--threads 2]

Quantizes ARTIFACT into OUT (if OUT is missing) with the given settings, then decodes the chat prompts of
tests/data/prompts.json both ways and prints whether the outputs match and each one's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from eaglex.exporter.quantize import quantize_artifact
from eaglex.runtime.engine import Engine

PROMPTS = Path(__file__).parents[1] / "tests" / "data" / "prompts.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scheme", choices=["int8", "int4"], default="int8")
    parser.add_argument("--activations", choices=["fp32", "int8"], default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.out.exists():
        quantize_artifact(args.artifact, args.out, args.scheme, activations=args.activations, progress=print)
    engine = Engine.load(args.out, threads=args.threads)
    print("activations:", engine.manifest.raw["target"]["quantization"]["activations"])
    prompts = [p for p in json.loads(PROMPTS.read_text()) if p["chat"]][: args.prompts]
    same = 0
    for prompt in prompts:
        ids = engine.encode(prompt["text"], chat=True)
        outputs, rates = [], []
        for speculative in (True, False):
            config = engine.default_config(max_new_tokens=args.new_tokens, speculative=speculative)
            started = time.perf_counter()
            outputs.append([t for chunk in engine.generate(ids, config) for t in chunk])
            rates.append(len(outputs[-1]) / (time.perf_counter() - started))
        same += outputs[0] == outputs[1]
        print(f"identical {outputs[0] == outputs[1]}: EAGLE-3 {rates[0]:.1f}, plain {rates[1]:.1f} tok/s")
    print(f"{same}/{len(prompts)} identical")


if __name__ == "__main__":
    main()
