"""Greedy decoding, one engine alone in its process: ms per token after the prefill, and tok/s over the
same prompts. Run the kinds in turn from a shell loop (A B A B ...) and compare medians of one sitting:
two engines in one process disturb each other through their spinning thread pools.

    python experiments/decode_alone.py eaglex ARTIFACT [--threads 2] [--prompts 5] [--runtime native]
        [--mode plain|spec|default]   # default: the artifact's tuned configuration
    python experiments/decode_alone.py genai GENAI_MODEL_DIR --artifact ARTIFACT   # genai's generator

Prompts: the first N MT-bench turns, as `eaglex bench` encodes them (the artifact's chat template).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

import harness

from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

MODES = {"plain": {"speculative": False}, "spec": {"speculative": True}, "default": {}}


def eaglex_tokens(engine: Engine, prompt: list[int], new: int, mode: str) -> tuple[list[int], list[float]]:
    config = engine.default_config(max_new_tokens=new, **MODES[mode])
    stats, tokens, stamps = GenerationStats(), [], []
    for chunk in engine.generate(prompt, config, stats):
        stamps.append(time.perf_counter())
        tokens += chunk
    return tokens, stamps


def genai_decoder(folder: Path, threads: int, stop: set[int]):
    import onnxruntime_genai as og

    from eaglex.bench.genai import session_overlay

    config = og.Config(str(folder))
    config.overlay(json.dumps(session_overlay(threads)))
    model = og.Model(config)

    def decode(prompt: list[int], new: int) -> tuple[list[int], list[float]]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        tokens, stamps = [], []
        while not generator.is_done() and len(tokens) < new:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            stamps.append(time.perf_counter())
            if tokens[-1] in stop:
                break
        return tokens, stamps

    return decode


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("kind", choices=("eaglex", "genai"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--artifact", type=Path, help="genai: the eaglex artifact whose tokenizer encodes")
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--runtime", default="python", help="eaglex: python or native (libeaglex)")
    parser.add_argument("--mode", choices=tuple(MODES), default="plain", help="eaglex: how it decodes")
    args = parser.parse_args()
    runtime = args.runtime if args.kind == "eaglex" else "python"
    engine = Engine.load(args.artifact or args.path, threads=args.threads, checksums=False, runtime=runtime)
    stop = engine.stop_tokens
    if args.kind == "eaglex":
        decode = lambda p, n: eaglex_tokens(engine, p, n, args.mode)  # noqa: E731
    else:
        decode = genai_decoder(args.path, args.threads, stop)
    prompts = [engine.encode(p.text, chat=True) for p in load_prompts("mt-bench", limit=args.prompts)]
    decode(prompts[0], 8)  # warm-up
    gaps, tokens, seconds, outputs = [], 0, 0.0, []
    for prompt in prompts:
        out, stamps = decode(prompt, args.new)
        gaps += [b - a for a, b in itertools.pairwise(stamps)]
        tokens, seconds = tokens + len(out) - 1, seconds + stamps[-1] - stamps[0]
        outputs.append(out)
    digest = hash(tuple(map(tuple, outputs))) & 0xFFFF  # equal digests: equal outputs
    name = f"eaglex {engine.runtime} {args.mode}" if args.kind == "eaglex" else "genai"
    print(
        f"{name} {args.path.name}: median {1000 * statistics.median(gaps):.2f} ms/token, "
        f"{tokens / seconds:.1f} tok/s over {tokens} tokens, output #{digest:04x}"
    )


if __name__ == "__main__":
    main()
