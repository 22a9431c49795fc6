"""exporter/fuse.py: residual add + RMSNorm -> SkipSimplifiedLayerNormalization, same numbers, fewer nodes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from eaglex.exporter.fuse import fuse_skip_rms_norms

HIDDEN = 16


def residual_block(skip_rows: int | str = "S") -> onnx.ModelProto:
    """s = a + b; y = w * s / sqrt(mean(s^2) + eps), as the exporter traces RMSNorm; s also feeds a second
    add (the next residual), so the sum must survive the fusion."""

    def value(name: str, rows: int | str = "S") -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, rows, HIDDEN])

    weights = np.linspace(0.5, 1.5, HIDDEN, dtype=np.float32)
    constants = {"w": weights, "two": np.float32(2), "axes": np.array([-1]), "eps": np.float32(1e-5)}
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Pow", ["s", "two"], ["p"]),
        helper.make_node("ReduceMean", ["p", "axes"], ["m"]),
        helper.make_node("Add", ["m", "eps"], ["me"]),
        helper.make_node("Sqrt", ["me"], ["r"]),
        helper.make_node("Div", ["s", "r"], ["d"]),
        helper.make_node("Mul", ["w", "d"], ["y"]),
        helper.make_node("Add", ["s", "y"], ["next"]),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [value("a"), value("b", skip_rows)],
        [value("y"), value("next")],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
        value_info=[value("s")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, rows: int) -> list[np.ndarray]:
    rng = np.random.default_rng(rows)
    feeds = {name: rng.standard_normal((1, rows, HIDDEN)).astype(np.float32) * 30 for name in ("a", "b")}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("rows", [1, 5])
def test_fused_block_computes_the_same_rows(rows):
    model = residual_block()
    want = run(model, rows)
    assert fuse_skip_rms_norms(model) == 1
    assert [n.op_type for n in model.graph.node] == ["SkipSimplifiedLayerNormalization", "Add"]
    got = run(model, rows)
    np.testing.assert_array_equal(got[1] - got[0], want[1] - want[0])  # the sum is the same float add
    np.testing.assert_allclose(got[0], want[0], rtol=2e-6, atol=1e-6)


def test_broadcast_skip_is_left_alone():
    """The fused kernel cannot broadcast the skip input: an add of [1, 1, H] to [1, S, H] stays as it is."""
    model = residual_block(skip_rows=1)
    assert fuse_skip_rms_norms(model) == 0
    assert len(model.graph.node) == 8
