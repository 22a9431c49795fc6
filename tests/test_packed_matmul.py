"""Float32 MatMuls marked for libeaglex's few-row kernel (exporter/packed_matmul.py,
native/src/packed_matmul.cpp): marking round-trips; a marked graph runs anywhere through its function
bodies with MatMul's exact results; with the kernel registered every row's result is the same whatever
rows share the call (what the lossless loop needs); and an exported artifact decodes EAGLE-3 = plain with
and without the kernel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_native import artifact, native_build

from eaglex.exporter.cpu_ops import DOMAIN
from eaglex.exporter.packed_matmul import mark, unmark
from eaglex.runtime.backends.onnxruntime import cpu_kernels
from eaglex.runtime.engine import Engine

__all__ = ["artifact", "native_build"]  # fixtures of test_native, used here too

K, N, VOCAB = 40, 48, 64


def model() -> onnx.ModelProto:
    """x @ w, then a tied table's transpose as lm_head: (x @ w)[:, :K] @ table.T; the table is also
    gathered from."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N), dtype=np.float32)
    table = rng.standard_normal((VOCAB, K), dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Slice", ["h", "zero", "k", "last"], ["hk"]),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["hk", "table_t"], ["logits"]),
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (table, "table"))]
    inits += [numpy_helper.from_array(np.array([v]), n) for v, n in ((0, "zero"), (K, "k"), (-1, "last"))]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["m", VOCAB]),
            helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["n", K]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(proto: onnx.ModelProto, register: bool, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if register:
        cpu_kernels(options)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(["logits"], {"x": x, "ids": np.array([3, 5])})[0]


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; none where it is absent)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


NO_KERNEL = "the kernel needs AVX-512 or AVX2 + FMA (elsewhere the fallback body runs, tested above)"
KERNEL = pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason=NO_KERNEL)
# libeaglex's kernels' variants: the CPU's best (AVX-512 where it has it), and AVX2 (EAGLEX_*=avx2).
VARIANTS = pytest.mark.parametrize("variant", ["", "avx2"])
AVX512 = "avx512f" in cpu_flags()
# Comparing a kernel's AVX-512 variant with its AVX2 one needs a CPU that runs both.
BOTH_VARIANTS = pytest.mark.skipif(not AVX512, reason="compares the AVX-512 variant with the AVX2 one")


def test_marking_round_trips_and_leaves_the_weights_alone():
    proto = model()
    weights = {t.name: t.SerializeToString() for t in proto.graph.initializer}
    assert mark(proto) == 2
    ops = Counter((node.domain, node.op_type) for node in proto.graph.node)
    assert ops[DOMAIN, "MatMul"] == 1 and ops[DOMAIN, "MatMulTransB"] == 1
    assert ops["", "Transpose"] == 0  # the lm_head reads the table itself
    assert {t.name: t.SerializeToString() for t in proto.graph.initializer} == weights
    assert sorted(f.name for f in proto.functions) == ["MatMul", "MatMulTransB"]
    assert unmark(proto) == 2
    ops = Counter((node.domain, node.op_type) for node in proto.graph.node)
    assert ops["", "MatMul"] == 2 and ops["", "Transpose"] == 1 and not proto.functions
    assert run(session(proto, register=False), np.ones((1, K), np.float32)).shape == (1, VOCAB)


def test_a_marked_graph_runs_anywhere_with_matmuls_results():
    """Without the kernel onnxruntime inlines the function bodies: the same numbers as the plain graph."""
    x = np.random.default_rng(2).standard_normal((5, K), dtype=np.float32)
    plain = run(session(model(), register=False), x)
    marked = model()
    mark(marked)
    assert np.array_equal(run(session(marked, register=False), x), plain)


@KERNEL
@VARIANTS
def test_each_row_gets_the_same_result_whatever_shares_its_call(native_build, monkeypatch, variant):
    """One FMA chain per output in k order: row i of a call of 1 to 13 rows equals a one-row call of row i
    bit for bit (AVX-512: blocks of 8 rows, then 4, 2 and 1; AVX2: 6, 4, 2, 1), and all are MatMul's up to
    rounding."""
    if not variant and not AVX512:
        pytest.skip("the float32 kernel's AVX2 variant runs only when asked (EAGLEX_PACKED_MATMUL=avx2)")
    monkeypatch.setenv("EAGLEX_PACKED_MATMUL", variant)
    proto = model()
    mark(proto)
    x = np.random.default_rng(3).standard_normal((13, K), dtype=np.float32)
    s = session(proto, register=True)
    one_by_one = np.concatenate([run(s, x[i : i + 1]) for i in range(13)])
    w, table = (numpy_helper.to_array(t) for t in model().graph.initializer[:2])
    assert np.allclose(one_by_one, (x @ w)[:, :K] @ table.T, rtol=1e-4, atol=1e-4)
    for rows in (2, 3, 4, 7, 8, 9, 13):
        assert np.array_equal(run(s, x[:rows]), one_by_one[:rows]), rows


@BOTH_VARIANTS
def test_both_variants_give_the_same_bits(native_build, monkeypatch):
    """The same FMA chains in 16 or 8 lanes: an artifact decodes the same on AVX-512 and AVX2 CPUs."""
    proto = model()
    mark(proto)
    x = np.random.default_rng(4).standard_normal((11, K), dtype=np.float32)
    results = []
    for variant in ("", "avx2"):
        monkeypatch.setenv("EAGLEX_PACKED_MATMUL", variant)
        results.append(run(session(proto, register=True), x))
    assert np.array_equal(*results)


@KERNEL
def test_the_kernel_runs_where_registered_and_can_be_switched_off(native_build, monkeypatch, tmp_path):
    """onnxruntime keeps the marked nodes where the kernel is registered and inlines their function bodies
    (MatMul) where it is not: with EAGLEX_PACKED_MATMUL=onnxruntime, and on CPUs without AVX-512 unless
    asked for the AVX2 variant."""
    proto = model()
    mark(proto)
    default = DOMAIN if AVX512 else ""
    for setting, domain in (("", default), ("avx2", DOMAIN), ("onnxruntime", "")):
        monkeypatch.setenv("EAGLEX_PACKED_MATMUL", setting)
        session(proto, register=True, optimized=tmp_path / f"{setting}.onnx")
        optimized = onnx.load(str(tmp_path / f"{setting}.onnx"))
        matmuls = [node.domain for node in optimized.graph.node if "MatMul" in node.op_type]
        assert matmuls == [domain, domain], setting


def test_an_artifact_decodes_losslessly_with_and_without_the_kernel(native_build, artifact, monkeypatch):
    """Both of libeaglex's kernels (this MatMul and the attention, tests/test_cpu_attention.py) or neither."""
    graph = onnx.load(str(artifact / "target.onnx"), load_external_data=False).graph
    marked = Counter(node.op_type for node in graph.node if node.domain == DOMAIN)
    assert marked["MatMul"] > 0 and marked["GroupQueryAttention"] > 0
    prompt = [5, 17, 30, 99, 4]
    outputs = {}
    for setting in ("onnxruntime", "kernel"):  # the kernels where the CPU has AVX-512
        monkeypatch.setenv("EAGLEX_PACKED_MATMUL", setting)
        monkeypatch.setenv("EAGLEX_CPU_ATTENTION", setting)
        for runtime in ("python", "native"):
            engine = Engine.load(artifact, threads=1, runtime=runtime)
            engine.stop_tokens = set()
            for speculative in (False, True):
                config = engine.default_config(max_new_tokens=24, speculative=speculative)
                chunks = engine.generate(prompt, config)
                outputs[setting, runtime, speculative] = [t for chunk in chunks for t in chunk]
    for setting in ("onnxruntime", "kernel"):
        plain = outputs[setting, "python", False]
        assert len(plain) == 24
        for runtime, speculative in ((r, s) for r in ("python", "native") for s in (False, True)):
            assert outputs[setting, runtime, speculative] == plain, (setting, runtime, speculative)
