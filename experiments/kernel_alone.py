"""One node alone, libeaglex's CPU kernel against onnxruntime's: microseconds per call at 1 to 16 rows.

    python experiments/kernel_alone.py attention [--rows 1,8] [--context 300] [--variant avx2]
    python experiments/kernel_alone.py int4 [--rows 1,2,4,8,16] [--k 576 --n 1536]

`attention`: GroupQueryAttention as the target calls it (SmolLM2's shape: 9 query heads, 3 KV heads, head
size 64, packed QKV with RoPE, a causal mask as attention_bias), the cache bound in place;
`int4`: MatMulNBits with symmetric 4-bit blocks of 32 and float32 activations. Each kernel runs in a
process of its own (this script once per kernel, alternated by the caller) or both here one after the
other (`--both`); medians of `--calls` calls after a warm-up, session overhead included. The kernel needs
libeaglex built (the tests build it) or $EAGLEX_LIBRARY.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from eaglex.exporter import cpu_attention, int4_matmul
from eaglex.runtime.backends.onnxruntime import cpu_kernels

HEADS, KV, D, CAPACITY = 9, 3, 64, 2048
OPSETS = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]


def attention_model() -> onnx.ModelProto:
    half = D // 2
    angles = np.arange(CAPACITY)[:, None] * 10000.0 ** (-np.arange(half) / half)[None]
    info = helper.make_tensor_value_info
    cache = [1, KV, CAPACITY, D]
    inputs = [info("query", TensorProto.FLOAT, [1, "S", (HEADS + 2 * KV) * D])]
    inputs += [info(n, TensorProto.FLOAT, cache) for n in ("past_key", "past_value")]
    inputs += [
        info("seqlens_k", TensorProto.INT32, [1]),
        info("total_sequence_length", TensorProto.INT32, []),
    ]
    inputs += [info("position_ids", TensorProto.INT64, [1, "S"])]
    inputs += [info("attention_bias", TensorProto.FLOAT, [1, 1, "S", "L"])]
    names = ["query", "", "", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    names += ["cos", "sin", "position_ids", "attention_bias"]
    node = helper.make_node(
        "GroupQueryAttention", names, ["output", "present_key", "present_value"], domain="com.microsoft",
        num_heads=HEADS, kv_num_heads=KV, scale=D**-0.5, do_rotary=1, rotary_interleaved=0,
    )  # fmt: skip
    outputs = [info("output", TensorProto.FLOAT, [1, "S", HEADS * D])]
    outputs += [info(n, TensorProto.FLOAT, cache) for n in ("present_key", "present_value")]
    tables = [
        numpy_helper.from_array(f(angles).astype(np.float32), n)
        for f, n in ((np.cos, "cos"), (np.sin, "sin"))
    ]
    return helper.make_model(
        helper.make_graph([node], "attention", inputs, outputs, tables), opset_imports=OPSETS
    )


def attention_call(session: ort.InferenceSession, rows: int, context: int):
    rng = np.random.default_rng(0)
    caches = [rng.standard_normal((1, KV, CAPACITY, D), dtype=np.float32) for _ in range(2)]
    total = context + rows
    mask = np.concatenate([np.ones((rows, context), bool), np.tri(rows, dtype=bool)], axis=1)
    binding = session.io_binding()
    binding.bind_output("output")
    feeds = {
        "query": rng.standard_normal((1, rows, (HEADS + 2 * KV) * D), dtype=np.float32),
        "seqlens_k": np.array([total - 1], np.int32),
        "total_sequence_length": np.array(total, np.int32),
        "position_ids": (context + np.arange(rows))[None],
        "attention_bias": np.where(mask, np.float32(0), np.float32(-np.inf))[None, None],
    }
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for kind, cache in zip(("key", "value"), caches, strict=True):
        value = ort.OrtValue.ortvalue_from_numpy(cache)
        binding.bind_ortvalue_input(f"past_{kind}", value)
        binding.bind_ortvalue_output(f"present_{kind}", value)
    return lambda: session.run_with_iobinding(binding)


def int4_model(k: int, n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
    scales = (rng.random((n, k // 32), dtype=np.float32) * 0.02).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits", ["a", "b", "scales"], ["y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=32, accuracy_level=1,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "int4", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weights, "b"), numpy_helper.from_array(scales, "scales")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=OPSETS)


def session(model: onnx.ModelProto, marker, threads: int) -> ort.InferenceSession:
    """onnxruntime's kernel, or (`marker`: the exporter's marking) libeaglex's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if marker is not None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        marker(model)
        cpu_kernels(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def median_us(call, calls: int) -> float:
    for _ in range(calls // 10 + 5):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("op", choices=["attention", "int4"])
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--k", type=int, default=576)
    parser.add_argument("--n", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--kernel", choices=["eaglex", "onnxruntime", "both"], default="both")
    parser.add_argument("--variant", choices=["best", "avx2"], default="best", help="the attention's variant")
    args = parser.parse_args()
    if args.variant == "avx2":
        os.environ["EAGLEX_CPU_ATTENTION"] = "avx2"
    model = attention_model() if args.op == "attention" else int4_model(args.k, args.n)
    marker = cpu_attention.mark if args.op == "attention" else int4_matmul.mark
    kernels = ["onnxruntime", "eaglex"] if args.kernel == "both" else [args.kernel]
    for rows in (int(r) for r in args.rows.split(",")):
        for kernel in kernels:
            s = session(model, marker if kernel == "eaglex" else None, args.threads)
            if args.op == "attention":
                call = attention_call(s, rows, args.context)
            else:
                a = np.random.default_rng(1).standard_normal((rows, args.k), dtype=np.float32)
                call = lambda s=s, a=a: s.run(None, {"a": a})  # noqa: E731
            print(f"{args.op} {kernel:11s} rows {rows:2d}: {median_us(call, args.calls):7.1f} us")


if __name__ == "__main__":
    main()
