"""`kv_compact.onnx`: the KV-cache compaction of a verify pass as a graph, so a cache that lives in a GPU's
memory is compacted there (onnxruntime's CUDA execution provider) instead of travelling to the host.

After a verify pass the accepted tree nodes' rows move down to the committed slots. The runtime binds one
cache buffer, [layers, 2, 1, kv_heads, M, head_dim], as both `cache` and `cache_out`: Gather copies the
accepted rows out first, then ScatterND writes them to their new slots, in place (onnxruntime's ScatterND
skips its input copy when input and output are the same buffer).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

ELEMENT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
CACHE_DIMS = ["layers", "kv", "batch", "kv_heads", "capacity", "head_dim"]


def kv_compact_graph(dtype: str) -> onnx.ModelProto:
    """Inputs: `cache`, `slots` int64 [n] (the rows to keep, ascending) and `destinations` int64
    [layers, 2, 1, kv_heads, n, 5] (the full index of each kept row's new slot, made by
    eaglex.runtime.kv_cache.destinations); output `cache_out`."""
    element = ELEMENT_TYPES[dtype]
    kept = [*CACHE_DIMS[:4], "n", "head_dim"]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["cache", "slots"], ["rows"], axis=4),
            helper.make_node("ScatterND", ["cache", "destinations", "rows"], ["cache_out"]),
        ],
        "kv_compact",
        [
            helper.make_tensor_value_info("cache", element, CACHE_DIMS),
            helper.make_tensor_value_info("slots", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("destinations", TensorProto.INT64, [*kept[:5], 5]),
        ],
        [helper.make_tensor_value_info("cache_out", element, CACHE_DIMS)],
        value_info=[helper.make_tensor_value_info("rows", element, kept)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # readable by every onnxruntime the project supports (>= 1.22)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_kv_compact_graph(path: Path, dtype: str) -> None:
    onnx.save(kv_compact_graph(dtype), str(path))
