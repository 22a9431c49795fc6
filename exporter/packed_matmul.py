"""Float32 MatMuls marked for eaglex's few-row kernel, with plain MatMul as the fallback in the graph.

A verify pass multiplies the draft tree's T rows by every weight; onnxruntime's float32 GEMM costs 1.7-2x a
one-row pass at 8 rows on a 2-core CPU. libeaglex registers `eaglex.cpu.MatMul`
(native/src/packed_matmul.cpp): it packs each weight at load, as onnxruntime packs it for its own GEMM, and
keeps a panel of 16 columns in registers for all of a pass's rows.

Each MatMul by a constant float32 weight of 16k columns becomes `eaglex.cpu.MatMul(A, W)`, or
`eaglex.cpu.MatMulTransB(A, table)` where the weight is a transposed table (a tied lm_head); the weights
and their files are untouched. The model defines both ops as ONNX functions (MatMul; Transpose + MatMul),
which onnxruntime inlines wherever the kernel is not registered (no libeaglex, another onnxruntime program,
a CPU without AVX-512): those run exactly as before. quantize.py unmarks before quantizing and marks what
stays float32 afterwards.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .cpu_ops import DOMAIN, add_functions, default_opset, drop_functions

PANEL = 16
PLAIN, TRANSPOSED = "MatMul", "MatMulTransB"


def _functions(opset: int) -> list[onnx.FunctionProto]:
    imports = [helper.make_opsetid("", opset)]
    plain = [helper.make_node("MatMul", ["A", "B"], ["Y"])]
    transposed = [
        helper.make_node("Transpose", ["B"], ["BT"], perm=[1, 0]),
        helper.make_node("MatMul", ["A", "BT"], ["Y"]),
    ]
    return [
        helper.make_function(DOMAIN, PLAIN, ["A", "B"], ["Y"], plain, imports),
        helper.make_function(DOMAIN, TRANSPOSED, ["A", "B"], ["Y"], transposed, imports),
    ]


def _float_weight(name: str, inits: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    tensor = inits.get(name)
    if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
        return None
    return int(tensor.dims[0]), int(tensor.dims[1])


def mark(model: onnx.ModelProto) -> int:
    """Marks every MatMul by a constant float32 [K, N] weight with N a multiple of 16 (or by the transpose
    of an [N, K] table); returns how many. A transpose no other node reads goes."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    marked = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        shape, source = _float_weight(node.input[1], inits), producers.get(node.input[1])
        if shape is not None and shape[1] % PANEL == 0:
            node.domain = DOMAIN
        elif source is not None and source.op_type == "Transpose" and _is_swap(source):
            table = _float_weight(source.input[0], inits)
            if table is None or table[0] % PANEL:
                continue
            node.op_type, node.domain, node.input[1] = TRANSPOSED, DOMAIN, source.input[0]
        else:
            continue
        marked += 1
    if marked:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        for unread in [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & read]:
            graph.node.remove(unread)
        add_functions(model, _functions(default_opset(model)))
    return marked


def unmark(model: onnx.ModelProto) -> int:
    """The inverse of mark: plain MatMul nodes again (a transposed table behind a Transpose node)."""
    graph = model.graph
    unmarked, nodes = 0, []
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == TRANSPOSED:
            transposed = f"{node.input[1]}.transposed"
            nodes.append(helper.make_node("Transpose", [node.input[1]], [transposed], perm=[1, 0]))
            node.input[1] = transposed
        if node.domain == DOMAIN and node.op_type in (PLAIN, TRANSPOSED):
            node.op_type, node.domain = "MatMul", ""
            unmarked += 1
        nodes.append(node)
    if unmarked:
        del graph.node[:]
        graph.node.extend(nodes)
        drop_functions(model, {PLAIN, TRANSPOSED})
    return unmarked


def _is_swap(node: onnx.NodeProto) -> bool:
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return perm == [1, 0]
