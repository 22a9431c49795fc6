"""onnxruntime backend: the embedded default, runs on any CPU.

The KV cache lives in numpy arrays that onnxruntime reads and writes in place: each layer's buffer is
bound as both `past_key.i` and `present_key.i`, which GroupQueryAttention recognises as a shared buffer,
so a step costs no cache copy (docs/ARTIFACT.md, shared/REFERENCE.md section 9).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from eaglex.errors import EaglexError
from eaglex.plugins.tree_attention.mask import mask_feeds
from eaglex.runtime.kv_cache import KVCache


def session_options(threads: int, spin: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OrtGraphSession:
    def __init__(
        self,
        path: Path,
        layers: int,
        kv_heads: int,
        head_dim: int,
        threads: int,
        plugin_op: bool = False,
        spin: bool = True,
    ):
        """plugin_op: the graph is TensorRT-flavoured; its eaglex::TreeAttention nodes run the numpy
        reference of the op (plugins/README.md), registered through onnxruntime-extensions."""
        options = session_options(threads, spin)
        self.plugin_op = plugin_op
        if plugin_op:
            from eaglex.plugins.tree_attention.onnxruntime_op import library_path

            options.register_custom_ops_library(library_path())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types with multi-line messages
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EaglexError(f"onnxruntime cannot load {path} ({first}); re-run eaglex export") from None
        capacity = self.session.get_inputs()[
            [i.name for i in self.session.get_inputs()].index("past_key.0")
        ].shape[2]
        self.capacity = int(capacity)
        self.cache = KVCache(layers, kv_heads, self.capacity, head_dim)
        self.output_names = [o.name for o in self.session.get_outputs() if not o.name.startswith("present_")]
        self.binding = self.session.io_binding()
        # Outputs keep the position of their first binding: the named ones come first, then the caches.
        for name in self.output_names:
            self.binding.bind_output(name)
        for i in range(layers):
            for kind, buffer in zip(("key", "value"), self.cache.layer(i), strict=True):
                value = ort.OrtValue.ortvalue_from_numpy(buffer)  # shares memory with the numpy view
                self.binding.bind_ortvalue_input(f"past_{kind}.{i}", value)
                self.binding.bind_ortvalue_output(f"present_{kind}.{i}", value)

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        total = mask.shape[1]
        if total > self.capacity:
            raise EaglexError(
                f"{total} rows exceed the KV cache of {self.capacity}; re-export with a larger --max-context"
            )
        if self.plugin_op:
            inputs = {**feeds, **mask_feeds(mask, cache_len)}
        else:
            bias = np.where(mask, np.float32(0), np.float32(-np.inf))[None, None]
            inputs = {
                **feeds,
                "attention_bias": bias,
                "seqlens_k": np.array([total - 1], dtype=np.int32),
                "total_sequence_length": np.array(total, dtype=np.int32),
            }
        for name, array in inputs.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            self.binding.bind_output(name)
        self.session.run_with_iobinding(self.binding)
        outputs = self.binding.get_outputs()
        return {name: outputs[k].numpy() for k, name in enumerate(self.output_names)}

    def keep(self, start: int, slots: np.ndarray) -> None:
        self.cache.keep(start, slots)
