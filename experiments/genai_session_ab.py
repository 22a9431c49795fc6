"""ms per decode step of onnxruntime-genai's graph, driven by genai's generator or by a session as eaglex
drives its own (I/O binding, past and present sharing one buffer), with the cache sized and the workers
spinning as asked: what of the gap between the two runtimes is in the driving, not the graph.

    python experiments/genai_session_ab.py GENAI_MODEL_DIR [--variants generator,stop-2048,stop-188]
        [--alternations 8] [--threads 2]

A variant runs in a process of its own, alternations rotated, and decodes 4 x 128 one-row steps from a
60-token context (contexts 60 to 187). `generator`: genai's own loop. `stop-N` / `spin-N`: an onnxruntime
session over a cache of N rows whose workers stop spinning after each call (eaglex's setting) or keep
spinning (genai's default). Prints each variant's median over alternations and its per-alternation ratio
to the first variant.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import numpy as np
from profile_passes import GenaiSession


def generator_steps(folder: Path, threads: int) -> list[float]:
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    overlay = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
    model = og.Model(config)
    gaps = []
    for _ in range(4):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=60 + 128)
        generator = og.Generator(model, params)
        generator.append_tokens([1000] * 60)
        last = None
        for _ in range(128):
            generator.generate_next_token()
            now = time.perf_counter()
            gaps += [now - last] if last else []
            last = now
    return gaps


def session_steps(folder: Path, threads: int, rows: int, spin: bool) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "0" if spin else "1")
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    genai = GenaiSession.open(folder, options, rows)
    session, binding = genai.session, genai.binding
    ids, gaps = np.full((1, 1), 1000, np.int64), []
    for _ in range(4):
        last = None
        for context in range(60, 188):
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", np.ones((1, context + 1), np.int64))
            binding.bind_output("logits")
            session.run_with_iobinding(binding)
            int(binding.get_outputs()[0].numpy().argmax())
            now = time.perf_counter()
            gaps += [now - last] if last else []
            last = now
    return gaps


def one(folder: Path, variant: str, threads: int) -> float:
    """Median seconds per step of one variant, in this process."""
    if variant == "generator":
        gaps = generator_steps(folder, threads)
    else:
        kind, rows = variant.split("-")
        gaps = session_steps(folder, threads, int(rows), spin=kind == "spin")
    return statistics.median(gaps[20:])


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("folder", type=Path, help="an onnxruntime-genai model folder (its builder's output)")
    parser.add_argument("--variants", default="generator,stop-2048,stop-188")
    parser.add_argument("--alternations", type=int, default=8)
    parser.add_argument("--one", help="(what each process runs) one variant, its median printed")
    args = parser.parse_args()
    if args.one:
        print(one(args.folder, args.one, args.threads))
        return
    variants = args.variants.split(",")
    values: dict[str, list[float]] = {v: [] for v in variants}
    for order in harness.rotations(variants, args.alternations):
        for variant in order:
            command = [
                sys.executable,
                __file__,
                str(args.folder),
                "--one",
                variant,
                "--threads",
                str(args.threads),
            ]
            values[variant].append(
                float(subprocess.run(command, capture_output=True, text=True).stdout.split()[-1])
            )
    print(harness.machine(args.threads))
    first = variants[0]
    for variant, seconds in values.items():
        ratios = [s / f for s, f in zip(seconds, values[first], strict=True)]
        print(
            f"{variant}: median {1000 * statistics.median(seconds):.3f} ms a step, "
            f"{statistics.median(ratios):.3f}x {first} (per alternation {min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
