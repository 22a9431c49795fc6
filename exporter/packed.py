"""Float32 weights stored for eaglex's few-row MatMul kernel, with a plain-MatMul fallback in the graph.

A verify pass multiplies the draft tree's T rows by every weight; onnxruntime's float32 GEMM costs 1.7-2x a
one-row pass at 8 rows on a 2-core CPU. `eaglex.cpu::PackedMatMul` (native/src/packed_matmul.cpp, built
into libeaglex) reads each weight once per pass and keeps a panel of 16 columns in registers for all rows.
Its weight is stored packed: B[p, k, j] = W[k, 16 p + j], so the kernel reads onnxruntime's initializer in
place (no second copy in memory).

The graph also defines PackedMatMul as an ONNX function whose body unpacks B and calls MatMul: where
libeaglex is not registered (not built, or another onnxruntime program) onnxruntime inlines that body and
folds the unpacking into a constant at load, so the artifact runs anywhere with the same results as
before. quantize.py unpacks before quantizing and packs what stays float32 afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN, OP, PANEL = "eaglex.cpu", "PackedMatMul", 16
SUFFIX = ".packed"


def _fallback(opset: int) -> onnx.FunctionProto:
    """PackedMatMul(A, B) = MatMul(A, unpack(B)): [P, K, 16] -> [K, P, 16] -> [K, 16 P]."""
    nodes = [
        helper.make_node("Transpose", ["B"], ["KP16"], perm=[1, 0, 2]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1]))),
        helper.make_node("Reshape", ["KP16", "shape"], ["W"]),
        helper.make_node("MatMul", ["A", "W"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, OP, ["A", "B"], ["Y"], nodes, [helper.make_opsetid("", opset)])


def pack(weight: np.ndarray) -> np.ndarray:
    """W [K, N] (N a multiple of 16) -> [N / 16, K, 16]."""
    k, n = weight.shape
    return np.ascontiguousarray(weight.reshape(k, n // PANEL, PANEL).transpose(1, 0, 2))


def unpack(packed: np.ndarray) -> np.ndarray:
    panels, k, _ = packed.shape
    return np.ascontiguousarray(packed.transpose(1, 0, 2).reshape(k, panels * PANEL))


def _constant_weight(graph: onnx.GraphProto, name: str, inits: dict, producers: dict) -> np.ndarray | None:
    """The [K, N] float32 weight behind a MatMul's second input: an initializer, or the transpose of one
    (a tied embedding table as lm_head); None for anything else."""
    if name in inits:
        weight = numpy_helper.to_array(inits[name])
    elif (node := producers.get(name)) is not None and node.op_type == "Transpose" and node.input[0] in inits:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0]:
            return None
        weight = numpy_helper.to_array(inits[node.input[0]]).T
    else:
        return None
    ok = weight.dtype == np.float32 and weight.ndim == 2 and weight.shape[1] % PANEL == 0
    return weight if ok else None


def pack_model(model: onnx.ModelProto) -> int:
    """Turns every MatMul by a constant float32 [K, N] weight (N a multiple of 16) into PackedMatMul with
    that weight packed; returns how many. Weights no other node reads are replaced, not kept twice."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    packed = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = _constant_weight(graph, node.input[1], inits, producers)
        if weight is None:
            continue
        name = node.input[1] + SUFFIX
        if name not in inits:
            inits[name] = numpy_helper.from_array(pack(weight), name)
            graph.initializer.append(inits[name])
        node.op_type, node.domain, node.input[1] = OP, DOMAIN, name
        packed += 1
    if packed:
        _drop_unused(graph)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        model.functions.append(_fallback(opset))
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return packed


def unpack_model(model: onnx.ModelProto) -> int:
    """The inverse of pack_model: PackedMatMul nodes back to MatMul with [K, N] weights; returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    unpacked = 0
    for node in graph.node:
        if node.op_type != OP or node.domain != DOMAIN:
            continue
        name = node.input[1].removesuffix(SUFFIX)
        if name not in inits:
            inits[name] = numpy_helper.from_array(unpack(numpy_helper.to_array(inits[node.input[1]])), name)
            graph.initializer.append(inits[name])
        node.op_type, node.domain, node.input[1] = "MatMul", "", name
        unpacked += 1
    if unpacked:
        _drop_unused(graph)
        kept = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP)]
        del model.functions[:]
        model.functions.extend(kept)
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)
    return unpacked


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Removes initializers and Transpose nodes nothing reads any more (the tied table's transpose)."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & read]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def rewrite(path: Path, change: Callable[[onnx.ModelProto], int]) -> int:
    """Applies pack_model or unpack_model to the graph at `path` and its weights file, in place."""
    model = onnx.load(str(path))  # loads the external weights into memory
    count = change(model)
    if count:
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)  # onnx appends to an existing weights file
        onnx.save(model, str(path), save_as_external_data=True, location=data.name, size_threshold=1024)
        data.chmod(0o644)
    return count
