"""`eaglex run`: decode one prompt from an artifact, streaming the text."""

from __future__ import annotations

import time
from pathlib import Path

import click

from eaglex.cli.common import progress, user_errors


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
