"""Tracing the target and the drafter to ONNX graphs with the artifact's input and output names
(docs/ARTIFACT.md, "Shapes and names"): dynamic row counts, a cache of static shape per layer, and the
attention of the chosen backend (exporter/attention.py)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from .attention import mask_inputs
from .attention_onnx import onnx_translation_table
from .drafter import Eagle3Drafter
from .target import Target

MAX_TOP_K = 16  # the drafter graph returns at most this many candidates per row
CACHE_INPUTS = ("past_key", "past_value")
CACHE_OUTPUTS = ("present_key", "present_value")


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
