"""Graph rewrites for the onnxruntime flavour: operators onnxruntime's own optimiser does not form.

Each decoder layer adds a sublayer's output to the residual stream and normalises the sum for the next
sublayer. onnxruntime fuses the RMSNorm into one `SimplifiedLayerNormalization` kernel but leaves the add
alone, because the sum has other readers (the next residual add, the drafter's features).
`com.microsoft.SkipSimplifiedLayerNormalization` does both in one pass over the rows and also returns the
sum (its fourth output), which is what onnxruntime-genai's model builder emits: 60 fewer nodes for
SmolLM2's 30 layers. The sum is the same float32 addition and the kernel normalises each row alone, so a
row's result does not depend on how many rows the pass holds (what keeps verification lossless).

TensorRT-flavoured and float16 graphs are left as they are (the op is onnxruntime's, and precision.py
finds its float32 islands by the unfused pattern).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producers, consumers, constants and shapes of a graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto, base_dir: str = "") -> None:
        """base_dir: where the model's external data lies (small constants may be stored there too)."""
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.base_dir = base_dir
        self.outputs = {o.name for o in graph.output}
        self.shapes = {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info]
        }

    def only(self, name: str, op: str) -> onnx.NodeProto | None:
        """The node making `name`, if it is an `op` and `name` has no other reader."""
        node = self.producer.get(name)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx"):
            return None
        if len(self.consumers[name]) != 1 or name in self.outputs:
            return None
        return node

    def constant(self, name: str, size: int | None = None) -> np.ndarray | None:
        """An initializer's value, if `name` is one (of `size` elements, if given)."""
        tensor = self.initializers.get(name)
        if tensor is None or (size is not None and int(np.prod(tensor.dims)) != size):
            return None
        return numpy_helper.to_array(tensor, self.base_dir)

    def scalar(self, name: str) -> float | None:
        value = self.constant(name, 1)
        return None if value is None else float(value)

    def vector(self, name: str) -> bool:
        """Whether `name` is a 1-D initializer (a norm's weight), without reading it."""
        return name in self.initializers and len(self.initializers[name].dims) == 1


def _rms_norm(g: _Graph, mul: onnx.NodeProto) -> tuple[str, str, float, list[onnx.NodeProto]] | None:
    """Matches weight * (x / sqrt(mean(x^2, -1) + eps)) ending at `mul` (exporter/layers.py RMSNorm):
    returns (x, weight, eps, the matched nodes)."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    weight = next((i for i in mul.input if g.vector(i)), None)
    div = next((g.only(i, "Div") for i in mul.input if i != weight), None)
    if weight is None or div is None:
        return None
    x, root = div.input
    sqrt = g.only(root, "Sqrt")
    add = sqrt and g.only(sqrt.input[0], "Add")
    if add is None:
        return None
    mean_name = next((i for i in add.input if g.scalar(i) is None), None)
    eps_name = next((i for i in add.input if g.scalar(i) is not None), None)
    mean = mean_name and g.only(mean_name, "ReduceMean")
    if mean is None or eps_name is None or len(mean.input) != 2:
        return None
    axes = g.constant(mean.input[1], 1)
    keepdims = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
    power = g.only(mean.input[0], "Pow")
    if axes is None or axes.tolist() != [-1] or keepdims != 1 or power is None:
        return None
    if power.input[0] != x or g.scalar(power.input[1]) != 2.0:
        return None
    return x, weight, float(g.scalar(eps_name)), [power, mean, add, sqrt, div, mul]  # type: ignore[arg-type]


def _same_rows(a: list | None, b: list | None) -> bool:
    """Whether two [batch, rows, hidden] activations add without broadcasting, which the fused kernel
    cannot do: equal batch and hidden sizes, and rows equal or both symbolic (the exporter may name the
    same row count differently on two paths, e.g. the drafter's "Sf + Sh" and "s55"), never a literal 1."""
    if a is None or b is None or len(a) != 3 or len(b) != 3 or a[0] != b[0] or a[2] != b[2]:
        return False
    return a[1] == b[1] or (isinstance(a[1], str) and isinstance(b[1], str))


def fuse_skip_rms_norms(model: onnx.ModelProto, base_dir: str = "") -> int:
    """Rewrites every `s = a + b` followed by an RMSNorm of s into SkipSimplifiedLayerNormalization(a, b)
    whose fourth output keeps the name s for s's other readers. Returns how many were fused."""
    g = _Graph(model.graph, base_dir)
    removed: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    for node in model.graph.node:
        match = _rms_norm(g, node)
        if match is None:
            continue
        x, weight, eps, nodes = match
        residual = g.producer.get(x)
        if residual is None or residual.op_type != "Add" or residual.domain not in ("", "ai.onnx"):
            continue
        if id(residual) in replacements:  # one sum normalised twice: fuse the first norm only
            continue
        a, b = residual.input
        if not _same_rows(g.shapes.get(a), g.shapes.get(b)):
            continue
        fused = helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [a, b, weight],
            [node.output[0], "", "", x],
            name=f"{node.name or node.output[0]}/SkipSimplifiedLayerNorm",
            domain=MS_DOMAIN,
            epsilon=eps,
        )
        removed.update(id(n) for n in nodes)
        replacements[id(residual)] = fused  # at the add's place: its inputs are ready there
    kept = [replacements.get(id(n), n) for n in model.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    if replacements and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replacements)


def fuse_graph(path: Path) -> int:
    """Applies the fusions to the graph at `path` in place; its weights (external data) are not touched."""
    model = onnx.load(str(path), load_external_data=False)
    count = fuse_skip_rms_norms(model, str(path.parent))
    if count:
        onnx.save(model, str(path))
    return count
