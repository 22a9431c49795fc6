"""float32 ONNX graphs -> float16 or bfloat16 graphs, for TensorRT's strongly typed networks.

TensorRT 11 takes precision from the graph's types only (no FP16 builder flag), so `eaglex build --fp16`
rewrites the graph: weights, activations, the KV caches and the attention op in low precision, with two
kinds of float32 islands where low precision loses the answer, as Hugging Face keeps them:

- RoPE tables: position -> angle -> cos/sin in float32 (fp16 cannot even hold positions above 2048
  exactly); cos and sin are cast down where they meet the activations.
- RMSNorm statistics: x^2 -> mean -> +eps -> sqrt -> 1/x in float32 (x^2 overflows fp16 for |x| > 256),
  and the drafter's log-softmax and top-k (scores summed along tree paths).

An island starts at a Pow, a LogSoftmax or an integer-to-float Cast, and grows through consumers that
mix it only with constants; Cast nodes sit at its borders.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
FLOAT = TensorProto.FLOAT
_SEEDS = {"Pow", "LogSoftmax"}
_ISLAND_OPS = {"Mul", "Div", "Add", "Concat", "Cos", "Sin", "ReduceMean", "Sqrt", "Reciprocal", "TopK"}


def lower_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """A copy of `model` (weights loaded) whose float32 tensors are `precision`, except the islands."""
    low = LOW[precision]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    initializers = {t.name: t for t in graph.initializer}
    types.update({name: t.data_type for name, t in initializers.items()})

    def floats(node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and types.get(i) == FLOAT]

    island_tensors: set[str] = set()
    island_nodes: set[int] = set()
    for index, node in enumerate(graph.node):  # nodes are in topological order
        inputs = floats(node)
        seed = node.op_type in _SEEDS or (
            node.op_type == "Cast" and types.get(node.input[0]) != FLOAT and _cast_to(node) == FLOAT
        )
        grows = (
            node.op_type in _ISLAND_OPS
            and any(i in island_tensors for i in inputs)
            and all(i in island_tensors or i in initializers for i in inputs)
        )
        if seed or grows:
            island_nodes.add(index)
            island_tensors.update(o for o in node.output if types.get(o) == FLOAT)

    consumers: dict[str, set[int]] = defaultdict(set)
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].add(index)
    kept = {n for n, t in initializers.items() if t.data_type == FLOAT and consumers[n] <= island_nodes}
    for name, tensor in initializers.items():
        if tensor.data_type == FLOAT and name not in kept:
            tensor.CopyFrom(_convert(tensor, low))

    def current(name: str) -> int:
        return FLOAT if name in island_tensors or name in kept else low

    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    for index, node in enumerate(graph.node):
        want = FLOAT if index in island_nodes else low
        for position, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT or current(name) == want:
                continue
            if (name, want) not in casts:
                cast = f"{name}__as_{TensorProto.DataType.Name(want).lower()}"
                nodes.append(helper.make_node("Cast", [name], [cast], to=want, name=f"{cast}_cast"))
                casts[(name, want)] = cast
            node.input[position] = casts[(name, want)]
        if node.op_type == "Cast" and index not in island_nodes and _cast_to(node) == FLOAT:
            for attribute in node.attribute:
                if attribute.name == "to":
                    attribute.i = low
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)

    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == FLOAT:
            value.type.tensor_type.elem_type = current(value.name)
    return model


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _convert(tensor: onnx.TensorProto, low: int) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    if low == TensorProto.FLOAT16:
        return numpy_helper.from_array(values.astype(np.float16), tensor.name)
    # bfloat16: the top 16 bits of the float32, rounded to nearest even.
    bits = values.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    converted = helper.make_tensor(tensor.name, TensorProto.BFLOAT16, values.shape, bits.tobytes(), raw=True)
    return converted
