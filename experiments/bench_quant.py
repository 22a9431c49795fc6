"""Quantized eaglex (fp32, int8, int4; plain and EAGLE-3) against llama.cpp (f32, f16, Q4_1) on
SmolLM2-135M-Instruct, all in one interleaved run, for docs/BENCHMARKS.md:

    python experiments/bench_quant.py [--fp32 artifacts/smollm2] [--prompts 10] [--new-tokens 128]
                                  [--threads 2] [--agreement-prompts 20] [--json bench-results/quant.json]

1. Makes the int8 and int4 copies of the float32 artifact when missing (quantize_artifact: target and
   drafter, embeddings and lm_head quantized, blocks of 32, default activations), and an int4 copy with
   int8 activations ("int4a8": faster, not lossless), decoded plain only.
2. Peak RSS of fresh `eaglex run` processes, before this process loads anything (each started from a
   small wrapper process, so no parent's pages count).
3. Decodes MT-bench first turns (greedy, up to --new-tokens, stopping at end of turn) with every method,
   prompt by prompt, rotating the order: the machine is shared and noisy, only one run's ratios hold.
4. Agreement with float32, teacher-forced on the float32 greedy continuations of other MT-bench turns.

Needs eaglex[export,peers]. Prints JSON (also written to --json) and the markdown rows.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness

from eaglex.bench.agreement import artifact_scorer, default_prompts, measure_agreement
from eaglex.bench.llamacpp import GGUF_KINDS, LlamaCppModel, gguf_path
from eaglex.exporter.quantize import quantize_artifact, streamed_weight_bytes
from eaglex.runtime import manifest as contract
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

SCHEMES = ("fp32", "int8", "int4")
RSS_TOKENS = 32  # the peak comes with loading and the first verify passes; more tokens only cost time
RSS_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@dataclass
class Totals:
    """One method over all prompts: sums, so rates are weighted by tokens, and each prompt's own rate: on
    a shared 2-core machine a neighbour's burst can stall one decode many times over (llama.cpp's OpenMP
    threads busy-wait at barriers), so the median over prompts is the robust number."""

    tokens: int = 0  # decoded tokens after the first (the first comes out of the prefill)
    seconds: float = 0.0
    weight_bytes: int = 0
    passes: int = 0  # target forward passes after the prefill
    drafter_calls: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)  # tokens/s of each decode

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.rates.append(tokens / max(seconds, 1e-9))

    def summary(self) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "median_tokens_per_second": round(statistics.median(self.rates), 2) if self.rates else 0.0,
            "tokens_per_second": round(self.tokens / seconds, 2),
            "weights_GB_per_second": round(self.weight_bytes / seconds / 1e9, 2),
            "acceptance_length": round(self.tokens / max(self.passes, 1), 3),
            "ms_per_pass": round(1000 * self.verify_seconds / max(self.passes, 1), 2),
            "ms_per_drafter_call": round(1000 * self.draft_seconds / max(self.drafter_calls, 1), 2),
            "share_draft": round(self.draft_seconds / seconds, 3),
            "share_verify": round(self.verify_seconds / seconds, 3),
            **asdict(self),
        }


def peak_rss_mb(
    artifact: Path, prompt: str, threads: int, speculative: bool, tokens: int = RSS_TOKENS
) -> float:
    run = [
        sys.executable,
        "-m",
        "eaglex.cli",
        "run",
        str(artifact),
        "--prompt",
        prompt,
        "--chat",
        "--max-new-tokens",
        str(tokens),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *run, *([] if speculative else ["--no-spec"])],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return round(int(out.split()[-1]) / 1024, 1)


def decode_llama(
    model: LlamaCppModel, prompt: list[int], tokens: int, stop: set[int], total: Totals
) -> list[int]:
    run = model.decode(prompt, tokens, stop)
    passes = len(run.tokens) - 1
    total.add(passes, run.decode_seconds)
    total.passes += passes
    total.verify_seconds += run.decode_seconds
    total.weight_bytes += passes * model.weight_bytes
    return run.tokens


def decode_eaglex(
    engine: Engine,
    streamed: tuple[int, int],
    speculative: bool,
    prompt: list[int],
    tokens: int,
    total: Totals,
) -> list[int]:
    stats = GenerationStats()
    config = engine.default_config(max_new_tokens=tokens, speculative=speculative)
    out = [t for chunk in engine.generate(prompt, config, stats) for t in chunk]
    target_bytes, drafter_bytes = streamed
    total.add(stats.verified_tokens, stats.decode_seconds)
    total.passes += stats.target_passes
    total.drafter_calls += stats.drafter_calls
    total.draft_seconds += stats.draft_seconds
    total.verify_seconds += stats.verify_seconds
    total.weight_bytes += stats.target_passes * target_bytes + stats.drafter_calls * drafter_bytes
    return out


def artifact_mb(artifact: Path) -> float:
    return sum(info.bytes for info in contract.load(artifact, checksums=False).files.values()) / 1e6


def graph_mb(artifact: Path, graph: str) -> float:
    return contract.load(artifact, checksums=False).graph_bytes(graph) / 1e6


def quantized_copies(fp32: Path, log) -> dict[str, Path]:
    """The float32 artifact and its int8, int4 and int4a8 copies, made next to it when missing."""
    artifacts = {"fp32": fp32}
    for scheme, weights, activations in (
        ("int8", "int8", None),
        ("int4", "int4", None),
        ("int4a8", "int4", "int8"),
    ):
        artifacts[scheme] = fp32.with_name(f"{fp32.name}-{scheme}")
        if not (artifacts[scheme] / "manifest.json").exists():
            quantize_artifact(fp32, artifacts[scheme], weights, activations=activations, progress=log)
    return artifacts


def sizes_mb(artifacts: dict, streamed: dict, ggufs: dict, llamas: dict) -> dict[str, dict[str, float]]:
    eaglex = {
        f"eaglex {s}": {
            "artifact": round(artifact_mb(p), 1),
            "target": round(graph_mb(p, "target.onnx"), 1),
            "drafter": round(graph_mb(p, "drafter.onnx"), 1),
            "target_streamed_per_pass": round(streamed[s][0] / 1e6, 1),
            "drafter_streamed_per_call": round(streamed[s][1] / 1e6, 1),
        }
        for s, p in artifacts.items()
    }
    peers = {
        f"llama.cpp {k}": {
            "gguf": round(p.stat().st_size / 1e6, 1),
            "streamed_per_pass": round(llamas[k].weight_bytes / 1e6, 1),
        }
        for k, p in ggufs.items()
    }
    return eaglex | peers


def agreement(engines: dict, ggufs: dict, prompts: list, threads: int) -> dict[str, dict]:
    """Greedy match and KL of each quantized method against float32, teacher-forced."""
    scorers = {f"eaglex {s}": artifact_scorer(engines[s]) for s in ("int8", "int4", "int4a8")}
    scorer_models = {k: LlamaCppModel(ggufs[k], threads, n_ctx=1024, logits_all=True) for k in GGUF_KINDS}
    scorers |= {f"llama.cpp {k}": model.teacher_forced_logits for k, model in scorer_models.items()}
    results = measure_agreement(scorers, engines["fp32"], prompts, new_tokens=64)
    return {name: asdict(result) for name, result in results.items()}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--fp32", type=Path, default=Path("artifacts/smollm2"))
    parser.add_argument("--prompts", type=int, default=10, help="MT-bench first turns to decode")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--agreement-prompts", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench-results/quant.json"))
    args = parser.parse_args()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    artifacts = quantized_copies(args.fp32, log)
    ggufs = {kind: gguf_path(kind, progress=log) for kind in GGUF_KINDS}
    mt_bench = default_prompts(args.prompts + args.agreement_prompts, log)
    speed_prompts, agreement_prompts = mt_bench[: args.prompts], mt_bench[args.prompts :]
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": _machine(),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "load_average_start": os.getloadavg(),
    }

    log("peak RSS of fresh eaglex run processes")
    record["peak_rss_MB"] = {
        f"{scheme} {mode}": peak_rss_mb(
            artifacts[scheme], speed_prompts[0][0], args.threads, mode == "EAGLE-3"
        )
        for scheme in ("int4", "int8", "fp32")
        for mode in ("EAGLE-3", "plain")
    }
    log(json.dumps(record["peak_rss_MB"]))

    engines = {scheme: Engine.load(path, threads=args.threads) for scheme, path in artifacts.items()}
    llamas = {kind: LlamaCppModel(path, args.threads) for kind, path in ggufs.items()}
    streamed = {
        scheme: (streamed_weight_bytes(path / "target.onnx"), streamed_weight_bytes(path / "drafter.onnx"))
        for scheme, path in artifacts.items()
    }
    stop = engines["fp32"].stop_tokens
    methods = [(f"eaglex {s} {m}", s, m == "EAGLE-3") for s in SCHEMES for m in ("plain", "EAGLE-3")]
    methods += [("eaglex int4a8 plain", "int4a8", False)]
    methods += [(f"llama.cpp {kind}", kind, False) for kind in GGUF_KINDS]
    totals = {name: Totals() for name, _, _ in methods}
    outputs: dict[str, list[list[int]]] = {name: [] for name, _, _ in methods}

    def decode(name: str, key: str, speculative: bool, prompt: list[int], tokens: int) -> None:
        if name.startswith("llama.cpp"):
            out = decode_llama(llamas[key], prompt, tokens, stop, totals[name])
        else:
            out = decode_eaglex(engines[key], streamed[key], speculative, prompt, tokens, totals[name])
        outputs[name].append(out)

    warm = engines["fp32"].encode("Hello!", chat=True)
    for name, key, speculative in methods:  # first calls allocate and fault pages in: not timed
        decode(name, key, speculative, warm, 8)
    for name in totals:
        totals[name], outputs[name] = Totals(), []
    orders = harness.rotations(methods, len(speed_prompts))  # none always runs first
    for index, ((text, chat), order) in enumerate(zip(speed_prompts, orders, strict=True)):
        prompt = engines["fp32"].encode(text, chat)
        for name, key, speculative in order:
            decode(name, key, speculative, prompt, args.new_tokens)
        medians = ", ".join(f"{n} {totals[n].summary()['median_tokens_per_second']}" for n, _, _ in methods)
        log(f"prompt {index + 1}/{len(speed_prompts)}: {medians}")
    record["load_average_end"] = os.getloadavg()
    record["speed"] = {name: total.summary() for name, total in totals.items()}
    record["lossless"] = {
        scheme: outputs[f"eaglex {scheme} EAGLE-3"] == outputs[f"eaglex {scheme} plain"] for scheme in SCHEMES
    }
    record["same_output_as_eaglex_fp32"] = {
        name: sum(a == b for a, b in zip(outputs[name], outputs["eaglex fp32 plain"], strict=True))
        for name in outputs
    }
    record["sizes_MB"] = sizes_mb(artifacts, streamed, ggufs, llamas)
    log("agreement with float32")
    record["agreement_with_fp32"] = agreement(engines, ggufs, agreement_prompts, args.threads)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print(_markdown(record))


def _markdown(record: dict) -> str:
    rows = [
        "| method | tok/s (median over prompts) | tok/s (all tokens / all time) | weights GB/s at median | "
        "tokens per pass | ms per pass | ms per drafter call | same output as eaglex fp32 plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in record["speed"].items():
        drafter = f"{s['ms_per_drafter_call']}" if s["drafter_calls"] else ""
        bandwidth = s["weight_bytes"] / max(s["tokens"], 1) * s["median_tokens_per_second"] / 1e9
        rows.append(
            f"| {name} | {s['median_tokens_per_second']} | {s['tokens_per_second']} | {bandwidth:.2f} | "
            f"{s['acceptance_length']} | {s['ms_per_pass']} | {drafter} | "
            f"{record['same_output_as_eaglex_fp32'][name]}/{len(s['rates'])} |"
        )
    rows += ["", "| candidate | greedy token match | mean KL (nats) | positions |", "|---|---|---|---|"]
    for name, a in record["agreement_with_fp32"].items():
        rows.append(f"| {name} | {100 * a['greedy_match']:.2f}% | {a['mean_kl']:.4f} | {a['positions']} |")
    return "\n".join(rows)


def _machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
