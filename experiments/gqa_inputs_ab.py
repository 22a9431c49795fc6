"""Microseconds per GroupQueryAttention call with and without the inputs eaglex's graphs give it and
onnxruntime-genai's do not: attention_bias (the tree mask) and position_ids.

    python experiments/gqa_inputs_ab.py [--context 300] [--capacity 2048] [--rounds 400] [--threads 1]

A graph of 30 chained one-row GroupQueryAttention nodes (SmolLM2's shape: 9 query heads, 3 KV heads of 64,
rotary inside), each layer's cache bound in place as past and present, as eaglex runs its target. The four
variants (none, bias, positions, both) alternate call by call in one process; CPU time of the calling
thread with 1 thread.
"""

from __future__ import annotations

import statistics
import time

import harness
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30
WIDTH = (HEADS + 2 * KV_HEADS) * HEAD_DIM


def graph(capacity: int, bias: bool, positions: bool) -> bytes:
    """30 layers: each attends its own cache and feeds its output, padded back to the packed QKV width, on."""
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, "s", WIDTH])]
    inputs += [
        helper.make_tensor_value_info(f"{kind}{i}", TensorProto.FLOAT, [1, KV_HEADS, capacity, HEAD_DIM])
        for i in range(LAYERS)
        for kind in ("past_key", "past_value")
    ]
    inputs += [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total", TensorProto.INT32, []),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "s"]),
        helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, [1, 1, "s", "t"]),
    ]
    table = np.random.default_rng(0).random((capacity, HEAD_DIM // 2), dtype=np.float32)
    inits = [numpy_helper.from_array(table, "cos"), numpy_helper.from_array(table, "sin")]
    inits.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, WIDTH - HEADS * HEAD_DIM]), "pad"))
    nodes, previous, outputs = [], "qkv", []
    for i in range(LAYERS):
        extra = ["position_ids" if positions else "", "attention_bias" if bias else ""]
        attention = [previous, "", "", f"past_key{i}", f"past_value{i}", "seqlens_k", "total", "cos", "sin"]
        present = [f"out{i}", f"present_key{i}", f"present_value{i}"]
        nodes.append(
            helper.make_node(
                "GroupQueryAttention", attention + extra, present, domain="com.microsoft",
                num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1, scale=HEAD_DIM**-0.5,
            )
        )  # fmt: skip
        nodes.append(helper.make_node("Pad", [f"out{i}", "pad"], [f"qkv{i}"]))
        previous = f"qkv{i}"
        outputs += [f"present_key{i}", f"present_value{i}"]
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in [previous, *outputs]]
    model = helper.make_model(
        helper.make_graph(nodes, "gqa", inputs, values, inits),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    return model.SerializeToString()


def main() -> None:
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--capacity", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    cache = np.zeros((LAYERS, 2, 1, KV_HEADS, args.capacity, HEAD_DIM), np.float32)
    feeds = {
        "qkv": np.random.default_rng(1).random((1, 1, WIDTH), dtype=np.float32),
        "seqlens_k": np.array([args.context], np.int32),
        "total": np.array(args.context + 1, np.int32),
        "position_ids": np.array([[args.context]]),
        "attention_bias": np.zeros((1, 1, 1, args.context + 1), np.float32),
    }
    calls = {}
    for name, bias, positions in (("none", 0, 0), ("bias", 1, 0), ("positions", 0, 1), ("both", 1, 1)):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(
            graph(args.capacity, bias, positions), options, providers=["CPUExecutionProvider"]
        )
        binding = session.io_binding()
        for i in range(LAYERS):
            for k, kind in enumerate(("key", "value")):
                value = ort.OrtValue.ortvalue_from_numpy(cache[i, k])
                binding.bind_ortvalue_input(f"past_{kind}{i}", value)
                binding.bind_ortvalue_output(f"present_{kind}{i}", value)
        names = {i.name for i in session.get_inputs()}
        for key, value in feeds.items():
            if key in names:
                binding.bind_cpu_input(key, value)
        binding.bind_output(session.get_outputs()[0].name)
        calls[name] = (session, binding)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, (session, binding) in calls.items():
            started = time.thread_time()
            session.run_with_iobinding(binding)
            seconds[name].append(time.thread_time() - started)
    print(harness.machine(args.threads), f"context {args.context}, cache of {args.capacity} rows")
    for name, values in seconds.items():
        print(f"{name}: {1e6 * statistics.median(values[20:]) / LAYERS:.2f} us per layer")


if __name__ == "__main__":
    main()
