"""Build time and engine size of TensorRT for RTX engines, per graph and compute capability.

    python experiments/measure_rtx.py ARTIFACT [--capabilities sm80,sm89] [--precision fp16] [--out FILE.json]

ARTIFACT: exported with --backend tensorrt (it is not modified: engines go to a temporary folder).
Each phase is timed separately: loading and converting the graph (fp16), the standard-attention rewrite,
parsing, then one build per capability, in wall-clock and in CPU seconds (all threads of this process: on
a machine shared with other work, CPU time is the steadier number); prints a markdown table and writes
the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from eaglex.exporter.engines import _load_at_precision, optimization_profiles
from eaglex.exporter.engines_rtx import (
    _Log,
    attention_kernels,
    build_plan,
    import_tensorrt_rtx,
    parse_capabilities,
    parse_network,
    rtx_profiles,
)
from eaglex.exporter.standard_attention import standard_attention_graph
from eaglex.runtime import manifest as contract


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--capabilities", default="sm80,sm89")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--max-prompt", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    trt = import_tensorrt_rtx()
    manifest = contract.load(args.artifact, checksums=False)
    max_context = manifest.target.max_context
    max_prompt = min(args.max_prompt or max_context, max_context)
    rows = []
    log = _Log(trt)
    for graph in ("target", "drafter"):
        spec = getattr(manifest, graph)
        layers = manifest.target.num_layers if graph == "target" else 1
        start, start_cpu = time.perf_counter(), time.process_time()
        model = _load_at_precision(args.artifact / spec.file, args.precision)
        loaded = time.perf_counter()
        model = standard_attention_graph(model)
        rewritten = time.perf_counter()
        parsed = parse_network(trt, log, model, graph, args.precision)
        parse_done, parse_cpu = time.perf_counter(), time.process_time()
        profiles = optimization_profiles(graph, manifest, max_prompt, manifest.tree.max_total_tokens)
        shaped = rtx_profiles(profiles, max_context, spec.num_kv_heads * spec.head_dim, layers)
        for capability in parse_capabilities(args.capabilities):
            began, began_cpu = time.perf_counter(), time.process_time()
            plan = build_plan(trt, log, parsed, shaped, capability)
            built, built_cpu = time.perf_counter(), time.process_time()
            with tempfile.TemporaryDirectory() as tmp:  # written once, as eaglex build does
                (Path(tmp) / "engine").write_bytes(plan)
            kernels = attention_kernels("\n".join(log.layers))
            fused = sum(1 for names in kernels.values() for name in names if "mha" in name)
            rows.append(
                {
                    "graph": graph,
                    "capability": capability,
                    "precision": args.precision,
                    "load_convert_s": round(loaded - start, 2),
                    "rewrite_s": round(rewritten - loaded, 2),
                    "parse_s": round(parse_done - rewritten, 2),
                    "build_s": round(built - began, 2),
                    "prepare_cpu_s": round(parse_cpu - start_cpu, 2),
                    "build_cpu_s": round(built_cpu - began_cpu, 2),
                    "engine_bytes": len(plan),
                    "attention_nodes": len(kernels),
                    "fused_attention_kernels": fused,
                    "layers_listed": len(log.layers),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.1f} GiB; TensorRT for RTX {trt.__version__}\n")
    header = "graph | capability | load+fp16 s | rewrite s | parse s | build s (CPU) | engine MB | fused MHA"
    print(f"| {header} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['graph']} | {r['capability']} | {r['load_convert_s']} | {r['rewrite_s']} | {r['parse_s']} "
            f"| {r['build_s']} ({r['build_cpu_s']}) | {r['engine_bytes'] / 1e6:.1f} "
            f"| {r['fused_attention_kernels']} ({r['attention_nodes']} nodes x 2 profiles) |"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"version": trt.__version__, "peak_rss_gib": peak, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
