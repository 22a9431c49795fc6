"""Milliseconds per target pass (1, 4, 8 rows) and per drafter call, interleaved across artifacts, and
where a pass spends its time (onnxruntime's profiler, grouped by operator type).

    python experiments/profile_passes.py ART_A ART_B [--rows 1,4,8] [--context 300] [--rounds 30]
    python experiments/profile_passes.py ART --profile [--rows 1,8]

Timings go through the runtime's own session (I/O binding, in-place KV cache), so they are what decoding
pays. A/B runs alternate artifacts pass by pass: on a shared machine only the ratios are trustworthy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from eaglex.exporter.quantize import streamed_weight_bytes
from eaglex.runtime.backends import onnxruntime as backend
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import run_target


def target_call(engine: Engine, rows: int, context: int):
    tokens, positions = np.full(rows, 1000, np.int64), context + np.arange(rows)
    mask = np.concatenate([np.ones((rows, context), bool), np.tri(rows, dtype=bool)], axis=1)
    return lambda: run_target(engine.target, tokens, positions, context, mask, np.arange(rows))


def drafter_call(engine: Engine, rows: int, context: int):
    """One drafter tree-level call of `rows` frontier rows after `context` committed ones."""
    drafter = engine.drafter
    assert drafter is not None
    width = drafter.embeddings.shape[1]
    feeds = {
        "input_embeds": np.asarray(drafter.embeddings[np.full(rows, 1000)], np.float32)[None],
        "features": drafter.no_features,
        "hidden": np.zeros((1, rows, width), np.float32),
        "position_ids": np.full((1, rows), context),
        "logit_index": np.arange(rows),
        "top_k": np.array([rows], np.int64),
    }
    mask = np.concatenate([np.ones((rows, context), bool), np.eye(rows, dtype=bool)], axis=1)
    return lambda: drafter.session.run(feeds, context, mask)


def calls(engine: Engine, rows: list[int], context: int) -> dict[str, object]:
    out = {f"target {r}": target_call(engine, r, context) for r in rows}
    if engine.drafter is not None:
        out |= {f"drafter {r}": drafter_call(engine, r, context) for r in sorted({1, max(rows)})}
    return out


@dataclass
class GenaiSession:
    """onnxruntime-genai's decoder graph in an onnxruntime session, each layer's cache of `capacity` rows
    bound in place as both past and present (one buffer, as genai and eaglex run theirs)."""

    session: ort.InferenceSession
    binding: ort.SessionIOBinding
    cache: np.ndarray  # kept here: the bindings point into it
    graph: Path

    @classmethod
    def open(cls, folder: Path, options: ort.SessionOptions, capacity: int) -> GenaiSession:
        config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        graph = folder / config["filename"]
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        shape = (config["num_key_value_heads"], capacity, config["head_size"])
        cache = np.zeros((config["num_hidden_layers"], 2, 1, *shape), np.float32)
        binding = session.io_binding()
        for i in range(config["num_hidden_layers"]):
            for k, kind in enumerate(("key", "value")):
                value = ort.OrtValue.ortvalue_from_numpy(cache[i, k])
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
        return cls(session, binding, cache, graph)


def genai_calls(folder: Path, rows: list[int], context: int, threads: int, capacity: int = 2048) -> tuple:
    """onnxruntime-genai's decoder graph (its model builder's output), run as genai runs it: past and
    present share one buffer per layer, logits for every row. For the per-pass comparison only."""
    genai = GenaiSession.open(folder, backend.session_options(threads), capacity)

    def call(r: int):
        ids, mask = np.full((1, r), 1000, np.int64), np.ones((1, context + r), np.int64)

        def run() -> None:
            genai.binding.bind_cpu_input("input_ids", ids)
            genai.binding.bind_cpu_input("attention_mask", mask)
            genai.binding.bind_output("logits")
            genai.session.run_with_iobinding(genai.binding)
            genai.binding.get_outputs()[0].numpy()

        return run

    return {f"target {r}": call(r) for r in rows}, streamed_weight_bytes(genai.graph)


def interleaved(
    artifacts: list[Path], rows: list[int], context: int, rounds: int, threads: int, genai: Path | None
) -> None:
    # With one thread onnxruntime runs on the calling thread, and its CPU time leaves out the time other
    # processes held the core: on a shared machine a steadier measure than the wall clock.
    clock = time.thread_time if threads == 1 else time.perf_counter
    engines = [Engine.load(a, threads=threads, checksums=False) for a in artifacts]
    timed = [calls(e, rows, context) for e in engines]
    target_gb = [streamed_weight_bytes(e.manifest.path(e.manifest.target.file)) / 1e9 for e in engines]
    names = [str(a) for a in artifacts]
    if genai is not None:
        genai_timed, genai_bytes = genai_calls(genai, rows, context, threads)
        timed.append(genai_timed)
        target_gb.append(genai_bytes / 1e9)
        names.append(f"genai {genai}")
    times: dict[tuple[int, str], list[float]] = defaultdict(list)
    for call in (c for t in timed for c in t.values()):
        call()  # warm-up
    for _ in range(rounds):
        for name in timed[0]:
            for i, table in enumerate(timed):
                if name in table:
                    started = clock()
                    table[name]()
                    times[i, name].append(clock() - started)
    kind = "CPU" if threads == 1 else "wall-clock"
    print(f"context {context}, {rounds} rounds, {threads} threads; median {kind} ms (GB/s of weights read)")
    print("| pass | " + " | ".join(names) + " | ratios to the first |")
    print("|---|" + "---|" * (len(names) + 1))
    for name in timed[0]:
        medians = [statistics.median(times[i, name]) if times[i, name] else None for i in range(len(names))]
        cells = [
            "" if m is None else f"{1000 * m:.2f}" + (f" ({gb / m:.1f})" if name.startswith("target") else "")
            for m, gb in zip(medians, target_gb, strict=True)
        ]
        ratios = " ".join(f"{m / medians[0]:.3f}" for m in medians[1:] if m is not None)
        print(f"| {name} | " + " | ".join(cells) + f" | {ratios} |")


def profile(artifact: Path, rows: list[int], context: int, rounds: int, threads: int) -> None:
    """Per operator type, microseconds per pass, from onnxruntime's profiler (one session per row count,
    so each profile holds only that pass)."""
    plain_options = backend.session_options
    for r in rows:

        def profiled(*args, r=r, **kwargs):
            options = plain_options(*args, **kwargs)
            options.enable_profiling = True
            options.profile_file_prefix = f"/tmp/eaglex-profile-{r}"
            return options

        backend.session_options = profiled
        engine = Engine.load(artifact, threads=threads, checksums=False)
        backend.session_options = plain_options
        profiled_calls = {f"target {r}": target_call(engine, r, context)}
        if engine.drafter is not None:
            profiled_calls[f"drafter {r}"] = drafter_call(engine, r, context)
        for name, call in profiled_calls.items():
            for _ in range(rounds):
                call()
            graph = engine.target if name.startswith("target") else engine.drafter.session  # type: ignore
            report(name, Path(graph.session.end_profiling()))


def report(name: str, trace: Path) -> None:
    """Prints the profile's per-operator totals per pass, leaving out the first (warm-up) pass."""
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm = runs[0]["ts"] + runs[0]["dur"]
    by_type: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warm:
            by_type[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    passes = len(runs) - 1
    total = sum(e["dur"] for e in runs[1:])
    kernels = sum(by_type.values()) / passes
    print(f"## {name}: {total / passes / 1000:.2f} ms per run, kernels {kernels / 1000:.2f} ms")
    for op, us in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"  {op:40s} {us / passes:9.0f} us  {count[op] // passes:4d} nodes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--genai", type=Path, help="an onnxruntime-genai model folder to time alongside")
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.profile:
        for artifact in args.artifacts:
            profile(artifact, rows, args.context, args.rounds, args.threads)
    else:
        interleaved(args.artifacts, rows, args.context, args.rounds, args.threads, args.genai)


if __name__ == "__main__":
    main()
