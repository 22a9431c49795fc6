"""Checkpoint -> artifact folder (docs/ARTIFACT.md): trace both graphs, write weights, tokenizer, manifest.

The folder is built next to `out_dir` and renamed into place at the very end, so `out_dir` exists only
when the whole export succeeded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract

from . import cpu_marks
from .attention import BACKENDS
from .checkpoints import check_weights, load_drafter, load_target, read_target_config
from .drafter import Eagle3Drafter
from .fuse import fuse_graph
from .graphs import MAX_TOP_K, export_drafter_graph, export_target_graph
from .kv_compact import write_kv_compact_graph
from .precision import lower_precision
from .quantize import SCHEMES, plain_where_lossy, quantize_graph, streamed_weight_bytes
from .target import Target, TargetConfig
from .tokens import copy_tokenizer, special_tokens
from .workdir import check_out_dir, clear_stale, make_work_dir, move_into_place

DEFAULT_MAX_CONTEXT = 2048
DEFAULT_TREE = {"top_k": 8, "depth": 5, "total_tokens": 24, "max_total_tokens": 128}
DTYPES = {"fp32": "float32", "fp16": "float16"}  # --precision -> the graphs' float type


def export_artifact(
    model_dir: str | Path,
    out_dir: str | Path,
    drafter_dir: str | Path | None = None,
    max_context: int | None = None,
    tree: Mapping[str, int] | None = None,
    progress: Callable[[str], Any] = print,
    overwrite: bool = False,
    backend: str = "onnxruntime",
    quantize: str | None = None,
    quantize_drafter: str | None = None,
    quantize_embeddings: bool = True,
    quantize_activations: str | None = None,
    precision: str = "fp32",
    quantize_symmetric: bool | None = None,
) -> Path:
    """Export a Hugging Face target (and optionally an EAGLE-3 drafter) to an artifact folder.

    max_context: KV-cache capacity M, fixed in the graphs' cache shapes; default the smaller of
    DEFAULT_MAX_CONTEXT and the model's max_position_embeddings. tree: overrides of the manifest's
    default draft-tree parameters. progress: receives one line per stage. backend: the graph flavour,
    "onnxruntime" (GroupQueryAttention) or "tensorrt" (the eaglex::TreeAttention plugin op). quantize:
    "int8" or "int4" weight-only quantization of the target (exporter/quantize.py); quantize_drafter: the
    same for the drafter (None: as the target, "none": float32); quantize_embeddings: quantize the token
    embedding table and the lm_heads too; quantize_activations: "fp32" or "int8" inside the target's
    quantized layers (None: fp32 for int4, int8 for int8; only fp32 keeps speculation lossless);
    quantize_symmetric: the target's blocks without zero points (None: by scheme, quantize_graph).
    precision: "fp32" or "fp16" graphs (fp16 for onnxruntime's CUDA execution provider, whose attention
    kernel has no float32 version; exporter/precision.py keeps RoPE and norm statistics in float32).
    Returns out_dir.
    """
    if backend not in BACKENDS:
        raise EaglexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    quantize_drafter = _check_quantization(quantize, quantize_drafter, backend, drafter_dir)
    if quantize_symmetric is not None and quantize is None:
        flag = "--symmetric" if quantize_symmetric else "--zero-points"
        raise EaglexError(f"{flag} applies to quantized weights: add --quantize int4 (or int8)")
    _check_precision(precision, backend, quantize)
    check_out_dir(Path(out_dir), overwrite)
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    stage = _stage_printer(progress)
    clear_stale(out_dir, progress)

    stage(f"loading {model_dir}")
    config = read_target_config(model_dir)
    if max_context is None:
        max_context = min(DEFAULT_MAX_CONTEXT, config.max_position_embeddings)
    tree_params = _tree_params(tree, max_context)
    _check_context(config, max_context, model_dir)
    # Before loading: a missing tokenizer or truncated weights fail in a second, not after a minute.
    tokens = special_tokens(model_dir)
    check_weights(model_dir, "model")
    if drafter_dir is not None:
        check_weights(Path(drafter_dir), "drafter")
    work = make_work_dir(out_dir)
    try:
        drafter = load_drafter(drafter_dir, config) if drafter_dir is not None else None
        target = load_target(model_dir, drafter.config.feature_layers if drafter is not None else None)
        stage("tracing target")
        export_target_graph(target, work / "target.onnx", max_context, backend)
        if drafter is not None:
            stage("tracing drafter")
            export_drafter_graph(drafter, work / "drafter.onnx", max_context, backend)
        quantization = {}
        for role, file, scheme, logits, activations, symmetric in (
            ("target", "target.onnx", quantize, "logits", quantize_activations, quantize_symmetric),
            ("drafter", "drafter.onnx", quantize_drafter, "topk_logprobs", "int8", None),  # it only proposes
        ):
            if scheme is not None:
                stage(f"quantizing {role} to {scheme}")
                quantization[role] = quantize_graph(
                    work / file, scheme, logits, quantize_embeddings, activations, symmetric=symmetric
                )
        if backend == "onnxruntime" and precision == "fp32":
            _fuse(work, drafter is not None)
        if precision != "fp32":
            stage(f"lowering the graphs to {precision}")
            for file in ("target.onnx", "drafter.onnx") if drafter is not None else ("target.onnx",):
                _lower_precision(work / file, precision)
        if backend == "onnxruntime":
            write_kv_compact_graph(work / "kv_compact.onnx", DTYPES[precision])
        stage("writing embeddings and tokenizer")
        np.save(work / "embed_tokens.npy", target.embed_tokens.weight.detach().float().numpy())
        copy_tokenizer(model_dir, work)
        stage("checksums")
        dtype = DTYPES[precision]
        contract.save(
            contract.Manifest(
                root=work,
                backend=backend,
                target=_target_entry(target, model_dir, max_context, dtype, quantization.get("target"), work),
                drafter=_drafter_entry(drafter, Path(drafter_dir), dtype, quantization.get("drafter"), work)
                if drafter is not None
                else None,
                tokens=contract.TokenSpec(**{**tokens, "eos_token_ids": tuple(tokens["eos_token_ids"])}),
                tree=plain_where_lossy(tree_params, quantization.get("target")),
                kv_compact="kv_compact.onnx" if backend == "onnxruntime" else None,
                files=contract.file_table(work, (p.name for p in work.iterdir() if p.is_file())),
            )
        )
        move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    stage(f"wrote {out_dir}")
    return out_dir


def _tree_params(tree: Mapping[str, int] | None, max_context: int) -> contract.TreeSpec:
    # A tree never outgrows the cache: the runtime also trims trees to the room left near the limit.
    params = {
        **DEFAULT_TREE,
        "max_total_tokens": min(DEFAULT_TREE["max_total_tokens"], max_context),
        **(tree or {}),
    }
    unknown = sorted(set(params) - set(DEFAULT_TREE))
    if unknown:
        raise EaglexError(f"unknown tree parameter {unknown[0]}: use {', '.join(DEFAULT_TREE)}")
    if not all(isinstance(v, int) and v >= 1 for v in params.values()):
        raise EaglexError(f"tree parameters must be positive integers, got {params}")
    if params["top_k"] > MAX_TOP_K:
        raise EaglexError(f"tree top_k {params['top_k']} exceeds the drafter graph's maximum {MAX_TOP_K}")
    if params["total_tokens"] > params["max_total_tokens"]:
        raise EaglexError(
            f"tree total_tokens {params['total_tokens']} exceeds "
            f"max_total_tokens {params['max_total_tokens']}"
        )
    return contract.TreeSpec(**params)  # checks the rest (depth <= total_tokens - 1)


def _check_quantization(
    quantize: str | None, quantize_drafter: str | None, backend: str, drafter_dir: str | Path | None
) -> str | None:
    """Validates the quantization settings; returns the drafter's scheme (None: float32)."""
    for scheme in (quantize, quantize_drafter):
        if scheme is not None and scheme != "none" and scheme not in SCHEMES:
            raise EaglexError(f"unknown quantization {scheme!r}: choose one of {', '.join(SCHEMES)}")
    drafter_scheme = quantize if quantize_drafter is None else quantize_drafter
    if drafter_scheme == "none" or drafter_dir is None:
        drafter_scheme = None
    if backend != "onnxruntime" and (quantize or drafter_scheme):
        raise EaglexError("quantized graphs (MatMulNBits) are for the onnxruntime backend: drop --quantize")
    return drafter_scheme


def _check_precision(precision: str, backend: str, quantize: str | None) -> None:
    if precision not in DTYPES:
        raise EaglexError(f"unknown precision {precision!r}: choose one of {', '.join(DTYPES)}")
    if precision == "fp32":
        return
    if backend != "onnxruntime":
        raise EaglexError("TensorRT takes its precision at build time: export fp32, then eaglex build --fp16")
    if quantize:
        raise EaglexError("--quantize keeps float32 activations: drop --precision fp16 or --quantize")


def _lower_precision(path: Path, precision: str) -> None:
    """Rewrites a graph and its weights file in `precision` (exporter/precision.py)."""
    model = lower_precision(onnx.load(str(path)), precision)  # loads the external weights into memory
    data = path.with_name(f"{path.name}.data")
    data.unlink()  # onnx appends to an existing weights file
    onnx.save(model, str(path), save_as_external_data=True, location=data.name)


def _fuse(work: Path, has_drafter: bool) -> None:
    """onnxruntime-only rewrites of the float32 graphs, quantized or not: the fusions (exporter/fuse.py),
    then the nodes libeaglex's kernels take marked for them (exporter/cpu_marks.py)."""
    for file in ("target.onnx", "drafter.onnx") if has_drafter else ("target.onnx",):
        fuse_graph(work / file)
        cpu_marks.mark(work / file)


def _check_context(config: TargetConfig, max_context: int, model_dir: Path) -> None:
    if max_context > config.max_position_embeddings:
        raise EaglexError(
            f"max_context {max_context} exceeds max_position_embeddings {config.max_position_embeddings} "
            f"in {model_dir}/config.json: export with a smaller --max-context"
        )
    if config.sliding_window is not None and config.sliding_window < max_context:
        raise EaglexError(
            f"{model_dir}/config.json uses sliding-window attention over {config.sliding_window} tokens, "
            f"less than max_context {max_context}: export with --max-context <= {config.sliding_window}"
        )


def _stage_printer(progress: Callable[[str], Any]) -> Callable[[str], None]:
    start = time.monotonic()

    def stage(message: str) -> None:
        progress(f"[{time.monotonic() - start:6.1f}s] {message}")

    return stage


def _target_entry(
    target: Target,
    model_dir: Path,
    max_context: int,
    dtype: str,
    quantization: contract.Quantization | None,
    work: Path,
) -> contract.TargetSpec:
    c = target.config
    return contract.TargetSpec(
        file="target.onnx",
        source=str(model_dir),
        architecture=c.architecture,
        dtype=dtype,
        hidden_size=c.hidden_size,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        max_context=max_context,
        feature_layers=tuple(target.feature_layers),
        quantization=quantization,  # None: float32 weights
        bytes_per_pass=streamed_weight_bytes(work / "target.onnx"),
    )


def _drafter_entry(
    drafter: Eagle3Drafter,
    drafter_dir: Path,
    dtype: str,
    quantization: contract.Quantization | None,
    work: Path,
) -> contract.DrafterSpec:
    c = drafter.config
    return contract.DrafterSpec(
        file="drafter.onnx",
        source=str(drafter_dir.resolve()),
        hidden_size=c.hidden_size,
        num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        draft_vocab_size=c.draft_vocab_size,
        max_top_k=min(MAX_TOP_K, c.draft_vocab_size),
        dtype=dtype,
        quantization=quantization,
        bytes_per_pass=streamed_weight_bytes(work / "drafter.onnx"),
    )
