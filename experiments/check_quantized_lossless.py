"""Speculative vs plain greedy output of a quantized copy of an artifact, prompt by prompt:

    python experiments/check_quantized_lossless.py ARTIFACT OUT --scheme int8 [--activations fp32|int8]
        [--prompts 8] [--new-tokens 64] [--threads 2]

Quantizes ARTIFACT into OUT (if OUT is missing) with the given settings, then decodes the chat prompts of
tests/data/prompts.json both ways (experiments/check_lossless.py).
"""

from __future__ import annotations

from pathlib import Path

import harness
from check_lossless import compare  # experiments/ is on sys.path when an experiment runs

from eaglex.exporter.quantize import quantize_artifact
from eaglex.runtime.engine import Engine


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scheme", choices=["int8", "int4"], default="int8")
    parser.add_argument("--activations", choices=["fp32", "int8"], default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if not args.out.exists():
        quantize_artifact(args.artifact, args.out, args.scheme, activations=args.activations, progress=print)
    engine = Engine.load(args.out, threads=args.threads)
    print("activations:", engine.manifest.target.quantization.activations)
    compare(engine, args.prompts, args.new_tokens)


if __name__ == "__main__":
    main()
