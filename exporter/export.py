"""Checkpoint -> artifact folder (docs/ARTIFACT.md): trace both graphs, write weights, tokenizer, manifest.

The folder is built next to `out_dir` and renamed into place at the very end, so `out_dir` exists only
when the whole export succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch.export import Dim

from eaglex.errors import EaglexError

from .attention import BACKENDS, mask_inputs, onnx_translation_table
from .checkpoints import load_drafter, load_target, read_target_config
from .drafter import Eagle3Drafter
from .fuse import fuse_graph
from .kv_compact import write_kv_compact_graph
from .precision import lower_precision
from .quantize import SCHEMES, quantize_graph
from .target import Target, TargetConfig
from .tokens import copy_tokenizer, special_tokens

FORMAT_VERSION = 1
DEFAULT_MAX_CONTEXT = 2048
DEFAULT_TREE = {"top_k": 8, "depth": 5, "total_tokens": 24, "max_total_tokens": 128}
DTYPES = {"fp32": "float32", "fp16": "float16"}  # --precision -> the graphs' float type
MAX_TOP_K = 16  # the drafter graph returns at most this many candidates per row
CACHE_INPUTS = ("past_key", "past_value")
CACHE_OUTPUTS = ("present_key", "present_value")


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
) -> Path:
    """Export a Hugging Face target (and optionally an EAGLE-3 drafter) to an artifact folder.

    max_context: KV-cache capacity M, fixed in the graphs' cache shapes; default the smaller of
    DEFAULT_MAX_CONTEXT and the model's max_position_embeddings. tree: overrides of the manifest's
    default draft-tree parameters. progress: receives one line per stage. backend: the graph flavour,
    "onnxruntime" (GroupQueryAttention) or "tensorrt" (the eaglex::TreeAttention plugin op). quantize:
    "int8" or "int4" weight-only quantization of the target (exporter/quantize.py); quantize_drafter: the
    same for the drafter (None: as the target, "none": float32); quantize_embeddings: quantize the token
    embedding table and the lm_heads too; quantize_activations: "fp32" or "int8" inside the target's
    quantized layers (None: fp32 for int4, int8 for int8; only fp32 keeps speculation lossless).
    precision: "fp32" or "fp16" graphs (fp16 for onnxruntime's CUDA execution provider, whose attention
    kernel has no float32 version; exporter/precision.py keeps RoPE and norm statistics in float32).
    Returns out_dir.
    """
    if backend not in BACKENDS:
        raise EaglexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    quantize_drafter = _check_quantization(quantize, quantize_drafter, backend, drafter_dir)
    _check_precision(precision, backend, quantize)
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()
    _check_out_dir(out_dir, overwrite)
    stage = _stage_printer(progress)

    stage(f"loading {model_dir}")
    config = read_target_config(model_dir)
    if max_context is None:
        max_context = min(DEFAULT_MAX_CONTEXT, config.max_position_embeddings)
    tree_params = _tree_params(tree, max_context)
    _check_context(config, max_context, model_dir)
    tokens = special_tokens(model_dir)  # before tracing: a missing tokenizer fails in a second, not a minute
    drafter = load_drafter(drafter_dir, config) if drafter_dir is not None else None
    target = load_target(model_dir, drafter.config.feature_layers if drafter is not None else None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared like any folder
    try:
        stage("tracing target")
        export_target_graph(target, work / "target.onnx", max_context, backend)
        if drafter is not None:
            stage("tracing drafter")
            export_drafter_graph(drafter, work / "drafter.onnx", max_context, backend)
        quantization = {}
        for role, file, scheme, logits, activations in (
            ("target", "target.onnx", quantize, "logits", quantize_activations),
            ("drafter", "drafter.onnx", quantize_drafter, "topk_logprobs", "int8"),  # it only proposes
        ):
            if scheme is not None:
                stage(f"quantizing {role} to {scheme}")
                quantization[role] = quantize_graph(
                    work / file, scheme, logits, quantize_embeddings, activations
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
        manifest = {
            "format": "eaglex-artifact",
            "version": FORMAT_VERSION,
            "backend": backend,
            "target": _target_entry(target, model_dir, max_context),
            "drafter": _drafter_entry(drafter, Path(drafter_dir)) if drafter is not None else None,
            "tokens": tokens,
            "tree": tree_params,
            "files": _file_table(work),
        }
        manifest["target"]["dtype"] = DTYPES[precision]
        if manifest["drafter"] is not None:
            manifest["drafter"]["dtype"] = DTYPES[precision]
        if backend == "onnxruntime":
            manifest["kv_compact"] = "kv_compact.onnx"
        manifest["target"]["quantization"] = quantization.get("target")  # null: float32 weights
        if manifest["drafter"] is not None:
            manifest["drafter"]["quantization"] = quantization.get("drafter")
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    stage(f"wrote {out_dir}")
    return out_dir


def export_target_graph(target: Target, path: Path, max_context: int, backend: str = "onnxruntime") -> None:
    """Trace the target to `path` (+ `path`.data) with dynamic S (new rows), L (P + S) and R (logit rows)."""
    c = target.config
    if backend == "onnxruntime":
        target.fuse_attention(max_context)
    rows, past_rows, logit_rows = 3, 2, 2  # example sizes >= 2 so no dimension is specialised to 0 or 1
    total = past_rows + rows
    cache = torch.zeros(1, c.num_kv_heads, max_context, c.head_dim)
    s, length = Dim("S", min=1, max=max_context), Dim("L", min=1, max=max_context)
    r = Dim("R", max=max_context)
    mask = mask_inputs(backend, rows, past_rows, s, length, max_context)
    args = (
        torch.zeros(1, rows, dtype=torch.int64),
        torch.arange(past_rows, total)[None],
        *mask.examples,
        torch.arange(logit_rows),
        [cache.clone() for _ in range(2 * c.num_layers)],
    )
    # The caches keep the static shape [1, kv, M, d].
    dynamic_shapes = ({1: s}, {1: s}, *mask.dynamic_shapes, {0: r}, [None] * (2 * c.num_layers))
    inputs = ["input_ids", "position_ids", *mask.names, "logit_index"]
    outputs = ["logits", "features"]
    for i in range(c.num_layers):
        inputs += [f"{name}.{i}" for name in CACHE_INPUTS]
        outputs += [f"{name}.{i}" for name in CACHE_OUTPUTS]
    dim_names = {
        "input_ids": {1: "S"},
        "position_ids": {1: "S"},
        **mask.dim_names,
        "logit_index": {0: "R"},
        "logits": {1: "R"},
        "features": {1: "S"},
    }
    _trace(target, args, dynamic_shapes, inputs, outputs, path, dim_names)


def export_drafter_graph(
    drafter: Eagle3Drafter, path: Path, max_context: int, backend: str = "onnxruntime"
) -> None:
    """Trace the drafter with dynamic Sf, Sh (either may be 0 at run time), L, R and top_k."""
    c = drafter.config
    n_features, n_hidden, past_rows, logit_rows = 2, 3, 2, 2
    rows = n_features + n_hidden
    total = past_rows + rows
    cache = torch.zeros(1, c.num_kv_heads, max_context, c.head_dim)
    sf, sh = Dim("Sf", min=0, max=max_context), Dim("Sh", min=0, max=max_context)
    length, r = Dim("L", min=1, max=max_context), Dim("R", max=max_context)
    # S = Sf + Sh: torch.export derives it, and we name it "S" in the saved graph.
    s = Dim.AUTO
    mask = mask_inputs(backend, rows, past_rows, s, length, max_context)
    args = (
        torch.zeros(1, rows, c.hidden_size),
        torch.zeros(1, n_features, len(c.feature_layers) * c.target_hidden_size),
        torch.zeros(1, n_hidden, c.hidden_size),
        torch.arange(past_rows, total)[None],
        *mask.examples,
        torch.arange(logit_rows),
        torch.tensor([min(MAX_TOP_K, c.draft_vocab_size)]),
        cache.clone(),
        cache.clone(),
    )
    dynamic_shapes = ({1: s}, {1: sf}, {1: sh}, {1: s}, *mask.dynamic_shapes, {0: r})
    dynamic_shapes += (None,) * 3
    inputs = ["input_embeds", "features", "hidden", "position_ids", *mask.names]
    inputs += ["logit_index", "top_k", "past_key.0", "past_value.0"]
    outputs = ["hidden_out", "topk_logprobs", "topk_ids", "present_key.0", "present_value.0"]
    dim_names = {
        "input_embeds": {1: "S"},
        "features": {1: "Sf"},
        "hidden": {1: "Sh"},
        "position_ids": {1: "S"},
        **mask.dim_names,
        "logit_index": {0: "R"},
        "hidden_out": {1: "S"},
        "topk_logprobs": {1: "R", 2: "top_k"},
        "topk_ids": {1: "R", 2: "top_k"},
    }
    _trace(drafter, args, dynamic_shapes, inputs, outputs, path, dim_names)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    # torch.onnx logs a warning per torchvision op it cannot register and warns about its own internals
    # (dynamic-axis renaming we redo ourselves, deprecations): noise for someone exporting a model.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _trace(
    module: torch.nn.Module,
    args: tuple,
    dynamic_shapes: tuple,
    inputs: list[str],
    outputs: list[str],
    path: Path,
    dim_names: dict[str, dict[int, str]],
) -> None:
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=onnx_translation_table(),
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=True)
    _rename_dims(path, dim_names)


def _rename_dims(path: Path, dim_names: dict[str, dict[int, str]]) -> None:
    """Give the dynamic dimensions the contract's names (torch.export calls them s70, "Sh + Sf"...)."""
    model = onnx.load(str(path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        for axis, name in dim_names.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(model, str(path))  # the weights stay in the untouched .data file


def _tree_params(tree: Mapping[str, int] | None, max_context: int) -> dict[str, int]:
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
    return params


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
    """onnxruntime-only fusions (exporter/fuse.py), on the float32 graphs, quantized or not."""
    for file in ("target.onnx", "drafter.onnx") if has_drafter else ("target.onnx",):
        fuse_graph(work / file)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EaglexError(f"{out_dir} exists and is not a folder: choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise EaglexError(f"{out_dir} already exists and is not empty: choose another folder or overwrite it")


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


def _target_entry(target: Target, model_dir: Path, max_context: int) -> dict[str, Any]:
    c = target.config
    return {
        "file": "target.onnx",
        "source": str(model_dir),
        "architecture": c.architecture,
        "dtype": "float32",
        "hidden_size": c.hidden_size,
        "num_layers": c.num_layers,
        "num_heads": c.num_heads,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_context": max_context,
        "feature_layers": list(target.feature_layers),
    }


def _drafter_entry(drafter: Eagle3Drafter, drafter_dir: Path) -> dict[str, Any]:
    c = drafter.config
    return {
        "file": "drafter.onnx",
        "source": str(drafter_dir.resolve()),
        "hidden_size": c.hidden_size,
        "num_heads": c.num_heads,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "draft_vocab_size": c.draft_vocab_size,
        "max_top_k": min(MAX_TOP_K, c.draft_vocab_size),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "manifest.json")
    return {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished folder to out_dir; an old out_dir (allowed by the caller) goes only after."""
    if not out_dir.exists():
        work.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
