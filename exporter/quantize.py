"""Weight-only quantization of exported graphs, for CPUs where decoding is bound by weight traffic.

Every linear layer becomes `com.microsoft.MatMulNBits` (int4 or int8 blocks along K, one fp32 scale and a
zero point per block), made by onnxruntime's own MatMulNBitsQuantizer. With `embeddings`, the
token-embedding `Gather` becomes `com.microsoft.GatherBlockQuantized` over the same blocks, and the
lm_head (tied to that table in SmolLM2 and Llama-3.2) is quantized like any linear layer. Norms,
attention and the KV cache stay float32, so graph inputs and outputs are unchanged.

Activations inside MatMulNBits are float32 (accuracy_level 1) or int8 (accuracy_level 4, faster). Only
float32 keeps speculative decoding lossless: attention over a draft tree and over a single token differ
in the last bit (a different summation order), and int8 rounding of the activations amplifies that into
different logits (measured on SmolLM2: speculative output left plain output in 4 of 8 prompts at int4).
The drafter only proposes tokens, so it always takes the faster int8 activations.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract

from . import cpu_marks
from .workdir import check_out_dir, clear_stale, make_work_dir

SCHEMES = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = 32  # as llama.cpp's Q4_1 / Q8_0, and the block MatMulNBits was measured fastest at
ACTIVATIONS = {"fp32": 1, "int8": 4}  # -> MatMulNBits accuracy_level
# Lossless by default. onnxruntime 1.32 has a fast float32-activation kernel for 4-bit weights only (8-bit
# ones take ~10x longer), so int8 weights are fast only with `activations="int8"`, which is not lossless.
DEFAULT_ACTIVATIONS = {"int4": "fp32", "int8": "fp32"}
# int4 without zero points: on SmolLM2 as close to float32 as with them (greedy match 65.6% against 63.5%
# over 20 prompts) and ~6% less MatMulNBits time per pass, as onnxruntime-genai quantizes
# (docs/BENCHMARKS.md). int8 keeps a zero point per block: not measured otherwise.
DEFAULT_SYMMETRIC = {"int4": True, "int8": False}


def quantize_graph(
    path: Path,
    scheme: str,
    logits_output: str,
    embeddings: bool = True,
    activations: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    symmetric: bool | None = None,
) -> contract.Quantization:
    """Rewrites the graph at `path` (+ `path`.data) in place; returns its manifest `quantization` entry.

    logits_output: the graph output the lm_head feeds ("logits", or the drafter's "topk_logprobs"): the
    lm_head is found from it, so `embeddings=False` can keep it (and the embedding table) in float32.
    activations: "fp32" or "int8" inside the quantized layers (None: DEFAULT_ACTIVATIONS[scheme]).
    symmetric: blocks without zero points (None: DEFAULT_SYMMETRIC[scheme]). A zero point per block (as
    Q4_1) costs bytes: ~6% of an int4 pass's MatMulNBits time.
    """
    if scheme not in SCHEMES:
        raise EaglexError(f"unknown quantization {scheme!r}: choose one of {', '.join(SCHEMES)}")
    activations = activations or DEFAULT_ACTIVATIONS[scheme]
    symmetric = DEFAULT_SYMMETRIC[scheme] if symmetric is None else symmetric
    if activations not in ACTIVATIONS:
        raise EaglexError(f"unknown activations {activations!r}: choose one of {', '.join(ACTIVATIONS)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise EaglexError(f"quantization block size must be a power of two >= 16, got {block_size}")
    bits = SCHEMES[scheme]
    with _quiet_quantizer():
        return _quantize(path, bits, scheme, logits_output, embeddings, activations, block_size, symmetric)


def _quantize(
    path: Path,
    bits: int,
    scheme: str,
    logits_output: str,
    embeddings: bool,
    activations: str,
    block_size: int,
    symmetric: bool,
) -> contract.Quantization:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(path))  # weights and all: the quantizer reads them, and the .data file is rewritten
    lm_head = _lm_head(model.graph, logits_output)
    if embeddings:
        _untie(model.graph, lm_head)
        gathered = _quantize_embedding_gathers(model.graph, bits, block_size)
    else:
        gathered = 0
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=ACTIVATIONS[activations],
        nodes_to_exclude=[] if embeddings else [lm_head.name],
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    model = quantizer.model.model
    linear = sum(node.op_type == "MatMulNBits" for node in model.graph.node)
    if linear == 0:
        raise EaglexError(f"{path.name} has no linear layer with constant weights to quantize")
    _save(model, path)
    return contract.Quantization(
        weights=scheme,
        method="MatMulNBits",
        block_size=block_size,
        symmetric=symmetric,
        activations=activations,
        accuracy_level=ACTIVATIONS[activations],
        quantized_linear_layers=linear,
        embeddings=gathered > 0,
        lm_head=embeddings,
    )


def quantize_artifact(
    source: str | Path,
    out: str | Path,
    scheme: str,
    drafter_scheme: str | None = None,
    embeddings: bool = True,
    activations: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], object] = print,
    symmetric: bool | None = None,
) -> Path:
    """A quantized copy of a float32 onnxruntime artifact, without tracing the model again (`eaglex export
    --quantize` does the same in one go). drafter_scheme: None quantizes the drafter as the target, "none"
    keeps it float32. activations, symmetric: the target's (see quantize_graph). The copy is built next to
    `out` and renamed into place when complete."""
    manifest = contract.load(source)
    check_out_dir(Path(out), overwrite)
    source, out = Path(source).resolve(), Path(out).resolve()
    if manifest.backend != "onnxruntime":
        raise EaglexError(f"{source} is a {manifest.backend} artifact: quantized graphs are for onnxruntime")
    if manifest.target.quantization:
        raise EaglexError(f"{source} is already quantized: start from the float32 artifact")
    drafter_scheme = scheme if drafter_scheme is None else drafter_scheme
    if scheme not in SCHEMES or drafter_scheme not in (*SCHEMES, "none"):
        raise EaglexError(f"unknown quantization {scheme!r} / {drafter_scheme!r}: use {', '.join(SCHEMES)}")
    clear_stale(out, progress)
    work = make_work_dir(out)
    try:
        for name in manifest.files:
            shutil.copy2(source / name, work / name)
        target, drafter = manifest.target, manifest.drafter
        graphs = [work / target.file, *([work / drafter.file] if drafter is not None else [])]
        for graph in graphs:  # the quantizer reads plain ops; what stays float32 is marked again below
            cpu_marks.unmark(graph)
        progress(f"quantizing target to {scheme}")
        target = dataclasses.replace(
            target,
            quantization=quantize_graph(
                work / target.file, scheme, "logits", embeddings, activations, symmetric=symmetric
            ),
        )
        target = dataclasses.replace(target, bytes_per_pass=streamed_weight_bytes(work / target.file))
        if drafter is not None and drafter_scheme != "none":
            progress(f"quantizing drafter to {drafter_scheme}")
            quantized = quantize_graph(
                work / drafter.file, drafter_scheme, "topk_logprobs", embeddings, "int8"
            )
            drafter = dataclasses.replace(
                drafter, quantization=quantized, bytes_per_pass=streamed_weight_bytes(work / drafter.file)
            )
        for graph in graphs:
            cpu_marks.mark(graph)
        contract.save(
            dataclasses.replace(
                manifest,
                root=work,
                target=target,
                drafter=drafter,
                tree=plain_where_lossy(manifest.tree, target.quantization),
                files=contract.file_table(work, manifest.files),
            )
        )
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def plain_where_lossy(tree: contract.TreeSpec, target: contract.Quantization | None) -> contract.TreeSpec:
    """The tree with plain decoding as the default where speculation would not reproduce plain decoding
    (int8 activations, Quantization.lossless_speculation); `eaglex run --spec` still speculates on request."""
    if target is None or target.lossless_speculation:
        return tree
    return dataclasses.replace(tree, speculative=False)


def streamed_weight_bytes(path: Path) -> int:
    """Bytes of weights a one-token pass reads: every initializer except tables that are only gathered from
    (a Gather reads one row; a GatherBlockQuantized one row of its data, scales and zero points).
    Divided into time, this is the memory bandwidth a decode step achieves."""
    model = onnx.load(str(path), load_external_data=False)
    gathers = ("Gather", "GatherBlockQuantized")
    # Gather's second input is the indices; GatherBlockQuantized's scales and zero points come after them.
    gathered = {
        name for n in model.graph.node if n.op_type in gathers for i, name in enumerate(n.input) if i != 1
    }
    read = {i for n in model.graph.node if n.op_type not in gathers for i in n.input}
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name in gathered and tensor.name not in read:
            continue
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    return len(tensor.raw_data) or numpy_helper.to_array(tensor).nbytes


def _lm_head(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    """The MatMul nearest to `output`, walking back through the nodes that produce it."""
    producer = {out: node for node in graph.node for out in node.output}
    frontier, seen = [output], set()
    while frontier:
        name = frontier.pop(0)
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul":
            return node
        frontier += list(node.input)
    raise EaglexError(f"no lm_head MatMul feeds the graph output {output!r}: not an eaglex export")


def _untie(graph: onnx.GraphProto, lm_head: onnx.NodeProto) -> None:
    """A tied lm_head reads Transpose(embedding table); give it its own transposed copy so the quantizer,
    which only quantizes constant weights, sees it (the two quantized copies together are still ~1/4 of
    the float32 table at int4)."""
    producer = {out: node for node in graph.node for out in node.output}
    transpose = producer.get(lm_head.input[1])
    initializers = {t.name: t for t in graph.initializer}
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return
    table = numpy_helper.to_array(initializers[transpose.input[0]])
    name = f"{transpose.input[0]}.lm_head"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
    lm_head.input[1] = name
    if not any(transpose.output[0] in node.input for node in graph.node):
        graph.node.remove(transpose)


def _quantize_embedding_gathers(graph: onnx.GraphProto, bits: int, block_size: int) -> int:
    """Gather(table [V, H], ids) -> GatherBlockQuantized over uint8 blocks along H (packed low nibble first
    at 4 bits), quantized by onnxruntime's own block kernel. Returns how many Gathers were rewritten."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    quantizer = DefaultWeightOnlyQuantizer(
        # Zero points always: a gather reads one row, so they cost nothing, and onnxruntime's
        # GatherBlockQuantized reads symmetric 4-bit blocks differently from how its quantizer writes them
        # (greedy match with float32 fell to 0 on SmolLM2).
        DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=bits)
    )
    initializers = {t.name: t for t in graph.initializer}
    count = 0
    for index, node in enumerate(list(graph.node)):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0:
            continue
        weights = numpy_helper.to_array(table)
        # The kernel quantizes the columns of a [K, N] matrix in blocks along K: columns = table rows.
        packed, scales, zero_points = quantizer.qbits_block_quant(np.ascontiguousarray(weights.T))
        rows = weights.shape[0]
        base = f"{table.name}.gather_q{bits}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed.reshape(rows, -1), base),
                numpy_helper.from_array(scales, f"{base}.scales"),
                numpy_helper.from_array(zero_points, f"{base}.zero_points"),
            ]
        )
        quantized = helper.make_node(
            "GatherBlockQuantized",
            [base, node.input[1], f"{base}.scales", f"{base}.zero_points"],
            list(node.output),
            name=f"{node.name}_q{bits}",
            domain="com.microsoft",
            bits=bits,
            block_size=block_size,
            gather_axis=0,
            quantize_axis=1,
        )
        graph.node.remove(node)
        graph.node.insert(index, quantized)
        count += 1
    used = {i for node in graph.node for i in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return count


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # Importing the quantizer calls logging.basicConfig(level=INFO), after which it logs a line per graph
    # node to the user: keep its loggers at WARNING, and take the root handler away again afterwards.
    root, quantizer_log = logging.getLogger(), logging.getLogger("onnxruntime.quantization")
    root_level, handlers, level = root.level, list(root.handlers), quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)
        quantizer_log.setLevel(level)


def _save(model: onnx.ModelProto, path: Path) -> None:
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing external-data file
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    data.chmod(0o644)  # onnx creates it private; an artifact is shared like any folder
