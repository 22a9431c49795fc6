"""Packed float32 weights (exporter/packed.py) and libeaglex's PackedMatMul kernel
(native/src/packed_matmul.cpp): the packing round-trips exactly; a packed graph runs anywhere through its
fallback body with MatMul's exact results; with the kernel registered every row's result is the same
whatever rows share the call (what the lossless loop needs); and an exported artifact decodes EAGLE-3 =
plain with and without the kernel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_native import artifact, native_build

from eaglex.exporter.packed import pack, pack_model, unpack, unpack_model
from eaglex.runtime.backends.onnxruntime import packed_matmul
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
        packed_matmul(options)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(["logits"], {"x": x, "ids": np.array([3, 5])})[0]


def avx512() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else False


NO_AVX512 = "the kernel is AVX-512 only (elsewhere the fallback body runs, tested above)"


def test_packing_round_trips_and_keeps_what_else_reads_a_weight():
    w = np.random.default_rng(1).standard_normal((K, N), dtype=np.float32)
    assert pack(w).shape == (N // 16, K, 16) and np.array_equal(pack(w)[1, 2], w[2, 16:32])
    assert np.array_equal(unpack(pack(w)), w)
    proto = model()
    assert pack_model(proto) == 2
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops == {"PackedMatMul": 2, "Slice": 1, "Gather": 1}  # the table's transpose is gone
    names = {t.name for t in proto.graph.initializer}
    assert {"w.packed", "table_t.packed", "table"} <= names and "w" not in names  # the table is gathered
    assert [f.name for f in proto.functions] == ["PackedMatMul"]
    assert unpack_model(proto) == 2
    assert Counter(node.op_type for node in proto.graph.node)["MatMul"] == 2 and not proto.functions


def test_a_packed_graph_runs_anywhere_with_matmuls_results():
    """Without the kernel onnxruntime inlines the fallback body: the same numbers as the unpacked graph."""
    x = np.random.default_rng(2).standard_normal((5, K), dtype=np.float32)
    plain = run(session(model(), register=False), x)
    packed = model()
    pack_model(packed)
    assert np.array_equal(run(session(packed, register=False), x), plain)


@pytest.mark.skipif(not avx512(), reason=NO_AVX512)
def test_each_row_gets_the_same_result_whatever_shares_its_call(native_build):
    """One FMA chain per output in k order: row i of a call of 1 to 13 rows equals a one-row call of row i
    bit for bit (8-row blocks, then 4, 2 and 1), and all are MatMul's up to rounding."""
    proto = model()
    pack_model(proto)
    x = np.random.default_rng(3).standard_normal((13, K), dtype=np.float32)
    s = session(proto, register=True)
    one_by_one = np.concatenate([run(s, x[i : i + 1]) for i in range(13)])
    w, table = (numpy_helper.to_array(t) for t in model().graph.initializer[:2])
    assert np.allclose(one_by_one, (x @ w)[:, :K] @ table.T, rtol=1e-4, atol=1e-4)
    for rows in (2, 3, 4, 7, 8, 9, 13):
        assert np.array_equal(run(s, x[:rows]), one_by_one[:rows]), rows


@pytest.mark.skipif(not avx512(), reason=NO_AVX512)
def test_the_kernel_runs_where_registered_and_can_be_switched_off(native_build, monkeypatch, tmp_path):
    """onnxruntime keeps the PackedMatMul nodes where the kernel is registered and inlines their fallback
    body (MatMul) where it is not: with EAGLEX_PACKED_MATMUL=onnxruntime."""
    proto = model()
    pack_model(proto)
    for setting, kept in (("", "PackedMatMul"), ("onnxruntime", "MatMul")):
        monkeypatch.setenv("EAGLEX_PACKED_MATMUL", setting)
        session(proto, register=True, optimized=tmp_path / f"{setting}.onnx")
        optimized = onnx.load(str(tmp_path / f"{setting}.onnx"))
        assert Counter(node.op_type for node in optimized.graph.node)[kept] == 2, setting


def test_an_artifact_decodes_losslessly_with_and_without_the_kernel(native_build, artifact, monkeypatch):
    graph = onnx.load(str(artifact / "target.onnx"), load_external_data=False).graph
    assert Counter(node.op_type for node in graph.node)["PackedMatMul"] > 0
    prompt = [5, 17, 30, 99, 4]
    outputs = {}
    for setting in ("onnxruntime", "kernel"):  # the kernel where the CPU has AVX-512
        monkeypatch.setenv("EAGLEX_PACKED_MATMUL", setting)
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
