"""`eaglex run`: decode one prompt from an artifact, streaming the text."""

from __future__ import annotations

import time
from pathlib import Path

import click

from eaglex.cli.common import progress, user_errors
from eaglex.errors import EaglexError
from eaglex.runtime.settings import RUNTIMES


def speculation(spec: bool, no_spec: bool, *tree_flags: int | None) -> bool | None:
    """Whether to speculate: as asked, and where only a tree flag is given too (a tree setting asks for a
    tree); None keeps the artifact's default (plain where eaglex tune found it faster)."""
    if no_spec:
        return False
    if spec or any(flag is not None for flag in tree_flags):
        return True
    return None


@click.command()
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
@click.option(
    "--min-path-probability",
    default=None,
    type=float,
    help="Tree: verify only drafted nodes whose path the drafter gives at least this probability (0: off) "
    "[default: the artifact's].",
)
@click.option(
    "--min-grow-probability",
    default=None,
    type=float,
    help="Tree: draft a level deeper only while the likeliest path is at least this likely (0: off) "
    "[default: the artifact's].",
)
@click.option("--no-spec", is_flag=True, help="Plain decoding, one token per target pass.")
@click.option(
    "--spec",
    is_flag=True,
    help="Speculative decoding even where eaglex tune found plain decoding faster (so do tree flags).",
)
@click.option(
    "--ngram",
    default=None,
    type=int,
    help="Prompt lookup: up to this many tokens copied from the context join each draft tree (0: off) "
    "[default: the artifact's, off unless eaglex tune found it faster].",
)
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
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="Whose loop decodes: python, native (libeaglex, built on first use) or auto (native where it is "
    "built and can run the artifact).",
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
    min_path_probability: float | None,
    min_grow_probability: float | None,
    no_spec: bool,
    spec: bool,
    ngram: int | None,
    threads: int,
    backend: str,
    device: str,
    runtime: str,
) -> None:
    """Generate text from an artifact, streaming it as it is accepted."""
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.generate import GenerationStats

    if spec and no_spec:
        raise EaglexError("--spec and --no-spec contradict each other: pass one of them")
    engine = Engine.load(artifact, threads=threads, backend=backend, device=device, runtime=runtime)
    if spec and engine.manifest.drafter is None:
        raise EaglexError(f"{artifact} has no drafter, so --spec cannot apply: export it with --drafter")
    config = engine.default_config(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        top_k=top_k,
        depth=depth,
        total_tokens=total_tokens,
        speculative=speculation(spec, no_spec, top_k, depth, total_tokens),
        ngram=ngram,
        min_path_probability=min_path_probability,
        min_grow_probability=min_grow_probability,
    )
    stats = GenerationStats()
    started = time.perf_counter()
    for piece in engine.stream_text(engine.encode(prompt, chat), config, stats):
        click.echo(piece, nl=False)
    click.echo()
    mode = "EAGLE-3" if engine.manifest.drafter is not None and config.speculative else "plain"
    mode += " + prompt lookup" if config.ngram else ""
    bandwidth = engine.weight_bytes_read(stats) / max(stats.decode_seconds, 1e-9) / 1e9
    progress(
        f"[{mode} on {engine.device}, {engine.runtime} loop] {stats.new_tokens} tokens in "
        f"{time.perf_counter() - started:.2f} s "
        f"(prefill {stats.prompt_tokens} tokens {stats.prefill_seconds:.2f} s) | "
        f"decode {stats.tokens_per_second:.1f} tok/s, "
        f"{bandwidth:.2f} GB/s of weights | mean acceptance length {stats.acceptance_length:.2f} | "
        f"target passes {stats.target_passes} | stop: {stats.stop_reason}"
    )
