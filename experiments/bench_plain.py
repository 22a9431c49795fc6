"""Plain decoding on onnxruntime vs transformers' generate, and per-token cost at short and long context.

Everything is measured in one process, interleaved, so the ratios hold even on a noisy machine:
    python experiments/bench_plain.py ARTIFACT [--tokens 128] [--threads 2] [--reps 3]
Prints markdown rows for docs/BENCHMARKS.md. Needs the export extra (torch, transformers) for the
transformers baseline; the eaglex side uses only the runtime.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness
import numpy as np

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

PROMPT = "Write a story about a lighthouse keeper who finds a message in a bottle."


def eaglex_plain(engine: Engine, prompt: list[int], tokens: int) -> GenerationStats:
    stats = GenerationStats()
    config = engine.default_config(max_new_tokens=tokens, speculative=False)
    for _ in engine.generate(prompt, config, stats):
        pass
    return stats


def transformers_generate(model, prompt: list[int], tokens: int) -> float:
    """Decode tokens/s of greedy generate, prefill excluded (timed as a 1-token generate)."""
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        total = time.perf_counter() - started
    return (out.shape[1] - len(prompt) - 1) / (total - prefill)


def per_token_ms(engine: Engine, context: int, tokens: int = 32) -> float:
    """Decode time per token with `context` tokens already in the cache (synthetic prompt of that length)."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, engine.manifest.target.vocab_size, context).tolist()
    stats = GenerationStats()
    config = engine.default_config(max_new_tokens=tokens, speculative=False)
    engine.stop_tokens, saved = set(), engine.stop_tokens  # measure exactly `tokens` steps
    for _ in engine.generate(prompt, config, stats):
        pass
    engine.stop_tokens = saved
    return 1000 * stats.decode_seconds / stats.target_passes


def peak_rss_mb(artifact: Path, tokens: int, threads: int) -> float:
    """Peak resident memory of a whole `eaglex run` process (plain decoding of `tokens` tokens).

    Call it before this process loads any model: a forked child starts with its parent's resident pages,
    which would count towards the child's peak."""
    cmd = [
        sys.executable,
        "-m",
        "eaglex.cli",
        "run",
        str(artifact),
        "--prompt",
        PROMPT,
        "--chat",
        "--max-new-tokens",
        str(tokens),
        "--no-spec",
        "--threads",
        str(threads),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = harness.parser(__doc__, artifact=True, reps=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    rss = peak_rss_mb(args.artifact, args.tokens, args.threads)
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.artifact, threads=args.threads)
    source = engine.manifest.target.source
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    prompt = engine.encode(PROMPT, chat=True)
    weights = engine.weight_bytes_read(GenerationStats(target_passes=1))

    rates = harness.interleaved(  # both see the same machine state
        {
            "eaglex": lambda: eaglex_plain(engine, prompt, args.tokens).tokens_per_second,
            "transformers": lambda: transformers_generate(model, prompt, args.tokens),
        },
        reps=args.reps,
    )
    print(harness.table(rates, baseline="transformers", unit="tok/s"), file=sys.stderr)
    short, long = per_token_ms(engine, 64), per_token_ms(engine, 1024)

    ours_m, theirs_m = harness.medians(rates).values()
    result = {
        "machine": harness.machine(args.threads),
        "eaglex_plain_tok_s": round(ours_m, 2),
        "eaglex_plain_GB_s": round(ours_m * weights / 1e9, 2),
        "transformers_tok_s": round(theirs_m, 2),
        "transformers_GB_s": round(theirs_m * weights / 1e9, 2),
        "speedup": round(ours_m / theirs_m, 2),
        "ms_per_token_ctx64": round(short, 2),
        "ms_per_token_ctx1024": round(long, 2),
        "peak_rss_MB": round(rss, 1),
        "weights_MB": round(weights / 1e6, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
