"""libeaglex (C) against the Python runtime on one artifact, interleaved: decode tok/s, host time per round
(decode time outside onnxruntime's Run, per target pass) and achieved weight bandwidth; greedy outputs
are compared token for token on the way. Writes docs/bench/native.md and a JSON next to it.

    python experiments/bench_native.py --artifact /work/artifacts/smollm2 --build BUILD_DIR
(BUILD_DIR: a CMake build of native/, e.g. cmake -S native -B build && cmake --build build)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import date
from pathlib import Path

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

CONFIGS = {  # name -> (speculative, tree (top_k, depth, total) or None for the artifact's tuned tree)
    "plain": (False, None),
    "EAGLE-3, tuned tree": (True, None),
    "EAGLE-3, tree 4/4/12": (True, (4, 4, 12)),
}


def time_python_graphs(engine: Engine) -> dict[str, float]:
    """Wraps each onnxruntime session's run_with_iobinding to add up the time spent inside it."""
    spent = {"seconds": 0.0}
    sessions = [engine.target] + ([engine.drafter.session] if engine.drafter else [])
    for graph in sessions:
        inner = graph.session.run_with_iobinding

        def timed(binding, *args, _inner=inner):
            start = time.perf_counter()
            _inner(binding, *args)
            spent["seconds"] += time.perf_counter() - start

        graph.session.run_with_iobinding = timed
    return spent


def run_python(engine: Engine, spent: dict, prompts: list[list[int]], speculative: bool, tree, max_new: int):
    totals = {"new": 0, "passes": 0, "drafter_calls": 0, "decode": 0.0, "graph": 0.0}
    outputs = []
    for prompt in prompts:
        overrides = dict(zip(("top_k", "depth", "total_tokens"), tree, strict=True)) if tree else {}
        config = engine.default_config(max_new_tokens=max_new, speculative=speculative, **overrides)
        stats = GenerationStats()
        ids = []
        for chunk in engine.generate(prompt, config, stats):
            if not ids:  # the prefill's graph time is not decode time
                spent["seconds"] = 0.0
            ids += chunk
        outputs.append(ids)
        totals["new"] += stats.new_tokens - 1
        totals["passes"] += stats.target_passes
        totals["drafter_calls"] += stats.drafter_calls
        totals["decode"] += stats.decode_seconds
        totals["graph"] += spent["seconds"]
    return outputs, totals


def run_native(build: Path, artifact: Path, prompts, speculative: bool, tree, max_new: int, threads: int):
    args = [str(build / "eaglex_c_test"), "generate", str(artifact), str(threads), "verify=1"]
    args += [f"max_new={max_new}", f"speculative={int(speculative)}"]
    if tree:
        args += [f"tree_top_k={tree[0]}", f"tree_depth={tree[1]}", f"tree_total={tree[2]}"]
    stdin = "".join(" ".join(map(str, p)) + "\n" for p in prompts)
    lines = subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout.splitlines()
    outputs = [[int(t) for t in line.split()[1:]] for line in lines if line.startswith("ids:")]
    totals = {"new": 0, "passes": 0, "drafter_calls": 0, "decode": 0.0, "graph": 0.0}
    for line in lines:
        if line.startswith("stats:"):
            s = dict(kv.split("=") for kv in line.split()[1:])
            totals["new"] += int(s["new"]) - 1
            totals["passes"] += int(s["passes"])
            totals["drafter_calls"] += int(s["drafter_calls"])
            totals["decode"] += float(s["decode"])
            totals["graph"] += float(s["graph"])
    return outputs, totals


def summarise(totals: dict, engine: Engine) -> dict:
    graph_bytes = engine.manifest.graph_bytes
    weights = totals["passes"] * graph_bytes(engine.manifest.target.file)
    if engine.manifest.drafter:
        weights += totals["drafter_calls"] * graph_bytes(engine.manifest.drafter.file)
    host = totals["decode"] - totals["graph"]
    return {
        "tok_s": totals["new"] / totals["decode"],
        "host_us_per_round": 1e6 * host / totals["passes"],
        "tokens_per_pass": totals["new"] / totals["passes"],
        "gb_s": weights / totals["decode"] / 1e9,
        **totals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--build", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=6, help="first turns of MT-bench")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved Python/C repetitions")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/native.md"))
    args = parser.parse_args()

    engine = Engine.load(args.artifact, threads=args.threads, checksums=False)
    spent = time_python_graphs(engine)
    lines = (Path.home() / ".cache/eaglex/datasets/mt-bench.jsonl").read_text().splitlines()
    questions = [json.loads(line)["turns"][0] for line in lines[: args.prompts]]
    prompts = [engine.encode(q, chat=True) for q in questions]
    results, parity = {}, {}
    for name, (speculative, tree) in CONFIGS.items():
        runs = {"python": [], "c": []}
        for repeat in range(args.repeats):
            print(f"{name}: repeat {repeat + 1}/{args.repeats}", flush=True)
            py_out, py = run_python(engine, spent, prompts, speculative, tree, args.max_new_tokens)
            c_out, c = run_native(
                args.build, args.artifact, prompts, speculative, tree, args.max_new_tokens, args.threads
            )
            runs["python"].append(summarise(py, engine))
            runs["c"].append(summarise(c, engine))
            parity[name] = parity.get(name, True) and py_out == c_out
        results[name] = runs
    record = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "args": vars(args),
    }
    record.update(results=results, parity=parity)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    args.out.write_text(report(record, args))
    print(args.out.read_text())


def report(record: dict, args) -> str:
    rows = []
    for name, runs in record["results"].items():
        mean = {k: {f: sum(r[f] for r in v) / len(v) for f in v[0]} for k, v in runs.items()}
        py, c = mean["python"], mean["c"]
        rows.append(
            f"| {name} | {py['tok_s']:.1f} | {c['tok_s']:.1f} | {c['tok_s'] / py['tok_s']:.2f}x | "
            f"{py['host_us_per_round']:.0f} | {c['host_us_per_round']:.0f} | {py['tokens_per_pass']:.2f} | "
            f"{py['gb_s']:.2f} / {c['gb_s']:.2f} | {'yes' if record['parity'][name] else 'NO'} |"
        )
    return "\n".join(
        [
            "## Native runtime (libeaglex, C) against the Python runtime",
            "",
            f"`python experiments/bench_native.py --artifact {args.artifact} --build BUILD` "
            f"({record['date']}): "
            f"first {args.prompts} MT-bench turns (chat template), greedy, {args.max_new_tokens} new tokens, "
            f"{args.threads} onnxruntime threads, onnxruntime 1.32 (the wheel's library for both), "
            f"{args.repeats} interleaved repetitions (Python, then C, per configuration), means shown.",
            "Machine: AMD EPYC Zen 5, 2 cores shared with other processes (noise is high: compare the ratios "
            "within a row, not rows across runs).",
            "tok/s counts decode tokens (after the prefill's first token) over decode time; host time per "
            "round is decode time outside onnxruntime's Run (both graphs) per target pass; GB/s is weight "
            "bytes streamed per second (each target pass and drafter call reads its graph once).",
            "",
            "| configuration | Python tok/s | C tok/s | C / Python | Python host µs/round | C host µs/round "
            "| tokens/pass | weight GB/s (Py / C) | same tokens |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    main()
