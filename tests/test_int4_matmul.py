"""4-bit MatMulNBits with float32 activations marked for libeaglex's few-row kernel
(exporter/int4_matmul.py, native/src/int4_matmul.cpp): marking round-trips and leaves int8-activation
nodes alone; a marked graph runs anywhere through its function body with onnxruntime's exact results; the
kernel matches onnxruntime's up to rounding, and every row's result is the same whatever rows share its
call (what the lossless loop needs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from test_native import native_build
from test_packed_matmul import BOTH_VARIANTS, KERNEL, VARIANTS

from eaglex.exporter import int4_matmul
from eaglex.exporter.cpu_ops import DOMAIN
from eaglex.runtime.backends.onnxruntime import cpu_kernels

__all__ = ["native_build"]  # a fixture of test_native, used here too

K, N, BLOCK = 96, 48, 32


def model(accuracy_level: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, (N, K // BLOCK, BLOCK // 2), dtype=np.uint8)
    scales = (rng.random((N, K // BLOCK), dtype=np.float32) * 0.05).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits", ["a", "b", "scales"], ["y"], domain="com.microsoft",
        K=K, N=N, bits=4, block_size=BLOCK, accuracy_level=accuracy_level,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "int4",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
        [numpy_helper.from_array(weights, "b"), numpy_helper.from_array(scales, "scales")],
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run(proto: onnx.ModelProto, register: bool, a: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if register:
        cpu_kernels(options)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a})[0]


def test_marking_round_trips_and_leaves_int8_activations_alone():
    proto, original = model(), model()
    assert int4_matmul.mark(proto) == 1
    assert [(n.domain, n.op_type) for n in proto.graph.node] == [(DOMAIN, "MatMulNBits")]
    assert [f.name for f in proto.functions] == ["MatMulNBits"]
    assert int4_matmul.unmark(proto) == 1
    assert onnx.printer.to_text(proto) == onnx.printer.to_text(original)
    assert int4_matmul.mark(model(accuracy_level=4)) == 0  # int8 activations: onnxruntime's VNNI path


def test_a_marked_graph_runs_anywhere_with_onnxruntimes_results():
    a = np.random.default_rng(1).standard_normal((3, K), dtype=np.float32)
    marked = model()
    int4_matmul.mark(marked)
    assert np.array_equal(run(marked, register=False, a=a), run(model(), register=False, a=a))


@KERNEL
@VARIANTS
def test_each_row_gets_the_same_result_whatever_shares_its_call(native_build, monkeypatch, variant):
    """The CPU's best variant and the AVX2 one (EAGLEX_INT4_MATMUL=avx2); up to 15 rows, so that every block
    size runs (AVX-512: 8, 4, 2, 1 rows; AVX2: 4, 2, 1)."""
    monkeypatch.setenv("EAGLEX_INT4_MATMUL", variant)
    a = np.random.default_rng(2).standard_normal((15, K), dtype=np.float32)
    marked = model()
    int4_matmul.mark(marked)
    one_by_one = np.concatenate([run(marked, register=True, a=a[i : i + 1]) for i in range(15)])
    np.testing.assert_allclose(one_by_one, run(model(), register=False, a=a), rtol=1e-5, atol=1e-5)
    for rows in (2, 3, 4, 5, 7, 8, 9, 12, 15):
        assert np.array_equal(run(marked, register=True, a=a[:rows]), one_by_one[:rows]), rows


@BOTH_VARIANTS
def test_both_variants_give_the_same_bits(native_build, monkeypatch):
    """The same float operations per output in 16 or 8 lanes, in blocks of different row counts."""
    a = np.random.default_rng(3).standard_normal((11, K), dtype=np.float32)
    marked = model()
    int4_matmul.mark(marked)
    results = []
    for variant in ("", "avx2"):
        monkeypatch.setenv("EAGLEX_INT4_MATMUL", variant)
        results.append(run(marked, register=True, a=a))
    assert np.array_equal(*results)
