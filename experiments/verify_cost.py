"""Where speculation pays: a target's verify cost against tree size, and the break-even acceptance length.

A speculative round costs one target pass over T tree rows plus the drafting; plain decoding costs one
one-row pass per token. A round yields tau tokens (accepted drafts plus the bonus token), so speculation
pays when

    tau > (verify(T) + draft) / verify(1).

On a GPU verify(T) ~ verify(1) for T up to ~64; on a CPU verify(T) grows with T, and how fast depends on
precision and model size (bandwidth-bound weights get cheaper with quantization, the compute per row does
not). This script measures both sides on this machine:

    python experiments/verify_cost.py build llama-1b   # random-weight HF folder -> artifacts fp32/int8/int4
    python experiments/verify_cost.py measure          # ms per target pass for T rows; drafter ms per round
    python experiments/verify_cost.py report           # break-even table + docs/bench/break-even.png

Models: SmolLM2-135M-Instruct (with its shipped drafter) and two Llama-shaped models with random weights
and SmolLM2's tokenizer (vocabulary 49,152, tied embeddings): ~1.1B (Llama-3.2-1B's layer shapes) and
~3.0B (Llama-3.2-3B's), each with a random EAGLE-3 drafter of its own shape (draft vocabulary 32,000, as
the official Llama-3 drafters) so drafting is timed, not guessed. Weights' values do not change the cost.
Everything is kept under ~/.cache/eaglex/experiments; results go to results.json there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("EAGLEX_CACHE", Path.home() / ".cache" / "eaglex")) / "experiments"
RESULTS = WORK / "verify_cost.json"
ROWS = (1, 2, 4, 8, 16, 32, 64)
# Lossless settings (fp32 activations) plus int4 with int8 activations, the fastest plain decoding here.
# int8 weights are measured with int8 activations: onnxruntime has no fast fp32-activation int8 kernel.
VARIANTS = {
    "fp32": None,
    "int8": ("int8", "int8"),
    "int4": ("int4", "fp32"),
    "int4-a8": ("int4", "int8"),
}
SHAPES = {  # Llama-3.2's layer shapes with SmolLM2's vocabulary
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32),
    "llama-3b": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24),
}
MAX_CONTEXT = 1024  # KV capacity of the experiment artifacts; costs are timed at CONTEXT cached tokens
CONTEXT = 256


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def parameters(shape: dict[str, int], vocab: int = 49152, kv_heads: int = 8) -> int:
    """Parameters of a tied-embedding Llama of this shape (norms left out)."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = kv_heads * h // shape["num_attention_heads"]
    return shape["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i) + vocab * h


def smollm2_dir() -> Path:
    from eaglex.exporter.fetch import fetch_model

    return fetch_model("smollm2", log)


def write_random_model(name: str, out: Path, layers: int | None = None) -> Path:
    """A Llama-shaped HF folder with random weights and SmolLM2's tokenizer, saved in bfloat16 (the
    exporter reads it back as float32): a 3B model is drawn in 6 GB instead of 12."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    source = smollm2_dir()
    base = json.loads((source / "config.json").read_text())
    shape = dict(SHAPES[name], **({"num_hidden_layers": layers} if layers else {}))
    config = LlamaConfig(
        **shape,
        num_key_value_heads=8,
        vocab_size=base["vocab_size"],
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"],
        pad_token_id=base["pad_token_id"],
    )
    log(f"{name}: random init of {config.num_hidden_layers} layers, hidden {config.hidden_size}")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # half the memory of float32 while the weights are drawn
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {params / 1e9:.2f} B parameters; saving")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    del model
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (source / file).exists():
            shutil.copy2(source / file, tmp / file)
    tmp.rename(out)
    return out


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1e6
    return 0.0


def check_memory(needed_gb: float, what: str) -> None:
    """This machine's memory is shared: refuse a step that would need more than is free, rather than
    let the kernel kill someone's process."""
    if available_gb() < needed_gb:
        sys.exit(f"error: {what} needs ~{needed_gb:.0f} GB and {available_gb():.1f} GB is available")


def folder_name(name: str, layers: int | None) -> str:
    return f"{name}-L{layers}" if layers else name


def build(name: str, variants: list[str], layers: int | None = None) -> None:
    """fp32 artifact (target + a random drafter of the model's shape), then quantized copies; the HF folder
    and, once quantized, the fp32 artifact are deleted unless fp32 is among the variants measured.

    Peak memory measured for llama-1b: 7.3 GB exporting (1.7x the float32 weights: the exporter's
    optimizer folds each weight's transpose into a new tensor) and 12.4 GB quantizing (3x): a full 3B
    model (12 GB of float32) cannot be built on a 24 GB machine, so `layers` builds it shallower."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact
    from eaglex.exporter.quantize import quantize_artifact

    folder = WORK / folder_name(name, layers)
    shape = dict(SHAPES[name], **({"num_hidden_layers": layers} if layers else {}))
    gb = 4e-9 * parameters(shape)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "fp32"
    if not (fp32 / "manifest.json").exists():
        hf = folder / "hf"
        if not (hf / "config.json").exists():
            write_random_model(name, hf, layers)
        drafter = folder / "drafter"
        if not (drafter / "config.json").exists():
            write_random_drafter(hf, drafter, draft_vocab_size=32000)
        check_memory(2 * gb + 1, f"exporting {gb:.1f} GB of float32 weights")
        log(f"{name}: exporting fp32 (peak RSS so far {peak_gb():.1f} GB)")
        export_artifact(hf, fp32, drafter_dir=drafter, max_context=MAX_CONTEXT, progress=log, overwrite=True)
        shutil.rmtree(hf)
        log(f"{name}: fp32 artifact written; HF folder deleted (peak RSS {peak_gb():.1f} GB)")
    for variant in variants:
        if VARIANTS.get(variant) is None or (folder / variant / "manifest.json").exists():
            continue
        scheme, activations = VARIANTS[variant]
        check_memory(3 * gb + 1, f"quantizing {gb:.1f} GB of float32 weights")
        log(f"{name}: quantizing to {variant}")
        quantize_artifact(
            fp32, folder / variant, scheme, activations=activations, progress=log, overwrite=True
        )
        log(f"{name}: {variant} written (peak RSS {peak_gb():.1f} GB)")
    if "fp32" not in variants:
        shutil.rmtree(fp32)


# Draft shape (top_k, depth) that grows a tree of T rows: chains for small trees, deeper and wider after.
DRAFT_SHAPE = {2: (1, 1), 4: (1, 3), 8: (2, 4), 16: (4, 5), 32: (8, 6), 64: (8, 8)}


def smollm2_variants() -> dict[str, Path]:
    """SmolLM2 with its shipped drafter: the read-only fp32 artifact and quantized copies of it."""
    from eaglex.exporter.quantize import quantize_artifact

    source = Path(os.environ.get("EAGLEX_SMOLLM2_ARTIFACT", "/work/artifacts/smollm2"))
    folders = {"fp32": source}
    for variant, spec in VARIANTS.items():
        if spec is None:
            continue
        out = WORK / "smollm2" / variant
        if not (out / "manifest.json").exists():
            log(f"smollm2: quantizing to {variant}")
            quantize_artifact(source, out, spec[0], activations=spec[1], progress=log, overwrite=True)
        folders[variant] = out
    return folders


def timings(calls: dict, reps: int, before=None) -> dict:
    """For each call: fastest and median wall seconds and median CPU seconds (all threads of this process),
    the calls taken in turn in every repetition so that a busy spell hits them alike. `before` (untimed)
    runs ahead of each call.

    Why CPU time: this machine is shared (load average ~12 on 2 cores while these were taken), so wall
    time mostly measures waiting for a core. With onnxruntime's threads not spinning (a waiting thread
    sleeps), CPU time is the work a pass does; on an idle machine its 2 threads finish it in about half."""
    import statistics

    for call in calls.values():
        call()  # warm-up: allocations for each shape
    wall: dict = {key: [] for key in calls}
    cpu: dict = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            if before is not None:
                before()
            w, c = time.perf_counter(), time.process_time()
            call()
            cpu[key].append(time.process_time() - c)
            wall[key].append(time.perf_counter() - w)
    return {
        key: {
            "wall_min_ms": 1000 * min(wall[key]),
            "wall_median_ms": 1000 * statistics.median(wall[key]),
            "cpu_ms": 1000 * statistics.median(cpu[key]),
        }
        for key in calls
    }


def measure_artifact(folder: Path, reps: int) -> dict:
    """Per T: a target pass over T rows (CONTEXT tokens cached, logits for every row, as a verify pass)
    and a drafter round of DRAFT_SHAPE[T] (grow the tree, then commit two accepted rows), as tune times
    them (eaglex/bench/tune.py), in wall and CPU time."""
    import numpy as np

    import eaglex.runtime.backends.onnxruntime as backend
    from eaglex.bench.round_costs import target_pass_call
    from eaglex.exporter.quantize import streamed_weight_bytes
    from eaglex.runtime.engine import Engine

    options = backend.session_options
    backend.session_options = lambda threads, spin=True: options(threads, False)  # see timings()
    engine = Engine.load(folder, threads=2, checksums=False)
    verify = timings({t: target_pass_call(engine, t, CONTEXT) for t in ROWS}, reps)
    drafter = engine.drafter
    prompt = [100 + i % 1000 for i in range(CONTEXT)]
    ids = np.asarray(prompt, np.int64)
    features = np.zeros((len(prompt), 3 * drafter.embeddings.shape[1]), np.float32)
    drafter.extend(ids, features, 8)
    committed = drafter.cache_len

    def round_call(k: int, depth: int):
        def call() -> None:
            drafter.cache_len = committed  # rows written past it are overwritten by the next call
            drafter.extend(ids[:2], features[:2], k)
            drafter.grow(prompt[-1], k, depth)

        return call

    one_row = target_pass_call(engine, 1, CONTEXT)  # as in decoding: drafting follows a target pass
    draft = timings({t: round_call(k, d) for t, (k, d) in DRAFT_SHAPE.items()}, reps, before=one_row)
    target = engine.manifest.target
    return {
        "verify": {str(t): v for t, v in verify.items()},
        "draft": {str(t): v for t, v in draft.items()},
        "load_average": os.getloadavg()[0],
        "target_weight_bytes": streamed_weight_bytes(folder / target.file),
        "drafter_weight_bytes": streamed_weight_bytes(folder / engine.manifest.drafter.file),
        "quantization": dataclasses.asdict(target.quantization) if target.quantization else None,
        "num_layers": target.num_layers,
        "hidden_size": target.hidden_size,
    }


def measure(models: list[str], reps: int) -> None:
    """Each artifact in its own process (one large model in memory at a time); results merged into RESULTS."""
    import subprocess

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for model in models:
        folders = (
            smollm2_variants()
            if model == "smollm2"
            else {v: WORK / model / v for v in VARIANTS if (WORK / model / v / "manifest.json").exists()}
        )
        for variant, folder in folders.items():
            log(f"measuring {model} {variant}")
            run = subprocess.run(
                [sys.executable, __file__, "measure-one", str(folder), "--reps", str(reps)],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                sys.exit(f"error: measuring {folder} failed: {run.stderr.strip().splitlines()[-1:]}")
            results.setdefault(model, {})[variant] = json.loads(run.stdout)
            cpu = {t: round(v["cpu_ms"], 1) for t, v in results[model][variant]["verify"].items()}
            log(f"  verify CPU ms {cpu}")
            RESULTS.write_text(json.dumps(results, indent=1))


def costs_of(raw: dict) -> dict:
    """The CPU-time costs (see timings()) the break-even uses, and the fastest one-row wall time."""
    return {
        "verify_ms": {t: v["cpu_ms"] for t, v in raw["verify"].items()},
        "draft_ms": {t: v["cpu_ms"] for t, v in raw["draft"].items()},
        "wall_1_ms": raw["verify"]["1"]["wall_min_ms"],
        **{k: raw[k] for k in ("target_weight_bytes", "drafter_weight_bytes", "num_layers", "hidden_size")},
    }


def extrapolated(results: dict, shallow: str, deep: str, layers: int) -> dict:
    """A model too large to build here, from two shallower builds of its shape: every layer costs the same
    (same weights, same work), so each cost is a + b * layers through the two measured depths."""
    out = {}
    for variant in results[shallow].keys() & results[deep].keys():
        a, b = results[shallow][variant], results[deep][variant]
        la, lb = a["num_layers"], b["num_layers"]

        def line(x: float, y: float, la: int = la, lb: int = lb) -> float:
            return x + (y - x) * (layers - la) / (lb - la)

        out[variant] = {
            "verify_ms": {t: line(a["verify_ms"][t], b["verify_ms"][t]) for t in a["verify_ms"]},
            "draft_ms": b["draft_ms"],  # the drafter is one layer whatever the target's depth
            "wall_1_ms": line(a["wall_1_ms"], b["wall_1_ms"]),
            "target_weight_bytes": line(a["target_weight_bytes"], b["target_weight_bytes"]),
            "drafter_weight_bytes": b["drafter_weight_bytes"],
            "num_layers": layers,
            "hidden_size": b["hidden_size"],
            "extrapolated_from": [shallow, deep],
        }
    return out


def break_even(costs: dict) -> dict[int, float]:
    """tau at which a round over T rows (verify + draft) costs what tau one-row passes cost."""
    one = costs["verify_ms"]["1"]
    return {t: (costs["verify_ms"][str(t)] + costs["draft_ms"][str(t)]) / one for t in DRAFT_SHAPE}


def report(plot_path: Path) -> str:
    """The break-even table (markdown) and the plot; the 3B model extrapolated from its 4/8-layer builds."""
    raw = json.loads(RESULTS.read_text())
    results = {model: {v: costs_of(r) for v, r in variants.items()} for model, variants in raw.items()}
    if {"llama-3b-L4", "llama-3b-L8"} <= results.keys():
        results["llama-3b"] = extrapolated(results, "llama-3b-L4", "llama-3b-L8", 28)
    models = [m for m in ("smollm2", "llama-1b", "llama-3b") if m in results]
    lines = [
        "| model | weights | GB read per pass | 1-row pass: CPU ms (GB per CPU-s); fastest wall ms "
        "| verify CPU ms T=4 / 16 / 64 "
        "| draft CPU ms T=4 / 16 / 64 | break-even tau T=2 / 4 / 8 / 16 / 32 / 64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for variant, costs in sorted(results[model].items(), key=lambda item: list(VARIANTS).index(item[0])):
            v, d, one = costs["verify_ms"], costs["draft_ms"], costs["verify_ms"]["1"]
            gb = costs["target_weight_bytes"] / 1e9
            wall = "n/a" if "extrapolated_from" in costs else f"{costs['wall_1_ms']:.0f}"
            tau = break_even(costs)
            lines.append(
                f"| {model} | {variant} | {gb:.2f} | {one:.1f} ({gb / one * 1e3:.1f}); {wall} "
                f"| {' / '.join(f'{v[t]:.0f}' for t in ('4', '16', '64'))} "
                f"| {' / '.join(f'{d[t]:.0f}' for t in ('4', '16', '64'))} | "
                + " / ".join(f"{tau[t]:.2f}" for t in DRAFT_SHAPE)
                + " |"
            )
    plot(results, models, plot_path)
    return "\n".join(lines)


COLOURS = {"fp32": "tab:blue", "int8": "tab:orange", "int4": "tab:green", "int4-a8": "tab:red"}


def plot(results: dict, models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for variant in [v for v in VARIANTS if v in results[model]]:  # the same colour per variant
            tau = break_even(results[model][variant])
            ax.plot(list(tau), list(tau.values()), "o-", color=COLOURS[variant], label=variant)
        ceiling = [d + 1 for _, d in DRAFT_SHAPE.values()]  # every draft accepted, plus the bonus token
        ax.plot(list(DRAFT_SHAPE), ceiling, ":", color="gray", label="most a tree of that depth yields")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(DRAFT_SHAPE), [str(t) for t in DRAFT_SHAPE])
        label = model + (" (extrapolated from 4 and 8 layers)" if model == "llama-3b" else "")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("tree size T (rows verified per pass)")
        ax.axhline(1, color="gray", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("break-even acceptance length tau\n(speculation pays above the line)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        "Where EAGLE-3 pays on this CPU (2 threads): tau > (verify(T) + draft) / verify(1)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="random-weight model -> fp32 and quantized artifacts")
    b.add_argument("model", choices=sorted(SHAPES))
    b.add_argument("--variants", default=",".join(VARIANTS))
    b.add_argument("--layers", type=int, default=None, help="fewer layers of the same shape")
    m = commands.add_parser("measure", help="time verify passes and drafter rounds")
    m.add_argument("--models", default="smollm2,llama-1b,llama-3b-L4,llama-3b-L8")
    m.add_argument("--reps", type=int, default=7)
    one = commands.add_parser("measure-one")
    one.add_argument("folder", type=Path)
    one.add_argument("--reps", type=int, default=7)
    r = commands.add_parser("report", help="break-even table and plot")
    r.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench" / "break-even.png")
    args = parser.parse_args()
    if args.command == "build":
        build(args.model, args.variants.split(","), args.layers)
    elif args.command == "measure":
        measure(args.models.split(","), args.reps)
    elif args.command == "report":
        print(report(args.plot))
    elif args.command == "measure-one":
        print(json.dumps(measure_artifact(args.folder, args.reps)))


if __name__ == "__main__":
    main()
