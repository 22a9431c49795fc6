"""onnxruntime backend: the embedded default, runs on any CPU, and on NVIDIA GPUs with onnxruntime-gpu.

The KV cache is read and written in place: each layer's buffer is bound as both `past_key.i` and
`present_key.i`, which GroupQueryAttention recognises as a shared buffer, so a step costs no cache copy
(docs/ARTIFACT.md; on the CPU it was also the fastest attention of the formulations measured for
SmolLM2's shapes, ahead of decomposed standard ops and ONNX Attention). On the CPU the buffer is a numpy
array; with the CUDA execution provider it lives in GPU memory and is compacted there (runtime/kv_cache.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnxruntime as ort

from eaglex.errors import EaglexError
from eaglex.plugins.tree_attention.mask import mask_feeds
from eaglex.runtime.kv_cache import DeviceKVCache, KVCache

DEVICES = ("auto", "cpu", "cuda")
NO_COMPACT_GRAPH = "this artifact has no kv_compact.onnx (exported by an older eaglex): re-export it"
CUDA = "CUDAExecutionProvider"
# onnxruntime's names of the graph input types the runtime feeds.
NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def resolve_device(requested: str, dtype: str, compact_graph: bool) -> str:
    """ "cpu" or "cuda" for `--device` (auto: the GPU when onnxruntime has its CUDA provider and the
    artifact can run there). dtype: the artifact's float type; compact_graph: it has kv_compact.onnx."""
    if requested not in DEVICES:
        raise EaglexError(f"unknown device {requested!r}: choose one of {', '.join(DEVICES)}")
    has_cuda = CUDA in ort.get_available_providers()
    if requested == "cuda":
        if not has_cuda:
            raise EaglexError(
                "this onnxruntime has no CUDA execution provider: on a machine with an NVIDIA GPU, pip "
                "install 'eaglex[gpu]' (onnxruntime-gpu, in place of onnxruntime), or use --device cpu"
            )
        if dtype != "float16":
            raise EaglexError(
                f"this artifact's graphs are {dtype} and onnxruntime's GPU attention (GroupQueryAttention) "
                "is float16 only: re-export with eaglex export --precision fp16"
            )
        if not compact_graph:
            raise EaglexError(NO_COMPACT_GRAPH)
    if requested == "auto":
        return "cuda" if has_cuda and dtype == "float16" and compact_graph else "cpu"
    return requested


def session_options(threads: int, spin: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # Workers spin between a call's operators but sleep once it returns: the target and the drafter take
    # turns on the same cores, and one session's threads spinning on between its calls would hold the
    # cores the other needs (docs/BENCHMARKS.md, "Thread pools that stop spinning").
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def cpu_kernels(options: ort.SessionOptions) -> None:
    """Registers libeaglex where it is built, which adds its CPU kernels for the nodes the exporter marks
    (exporter/cpu_marks.py: the few-row float32 and int4 MatMuls, the attention) on AVX-512 or AVX2 CPUs;
    elsewhere, or with EAGLEX_PACKED_MATMUL / EAGLEX_INT4_MATMUL / EAGLEX_CPU_ATTENTION=onnxruntime, those
    nodes run their function bodies (onnxruntime's kernels)."""
    from eaglex.runtime.native_build import built_library

    library = built_library()
    if library is not None:
        # A libeaglex from before the kernels (EAGLEX_LIBRARY) has no entry point: onnxruntime's then.
        with contextlib.suppress(Exception):
            options.register_custom_ops_library(str(library))


def providers(device: str) -> list:
    if device == "cuda":
        return [(CUDA, {"device_id": 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_graph(
    path: Path,
    io: Mapping[str, ort.NodeArg],
    layers: int,
    kv_heads: int,
    head_dim: int,
    widths: Mapping[str, int],
) -> None:
    """The graph's caches and widths against the manifest: a mismatch would fail on the first call."""

    def refuse(what: str) -> NoReturn:
        raise EaglexError(
            f"{path} does not match its manifest ({what}): the artifact is inconsistent; re-export it"
        )

    for i in range(layers):
        for kind in ("key", "value"):
            arg = io.get(f"past_{kind}.{i}")
            if arg is None:
                refuse(f"no input past_{kind}.{i}, but {layers} layers")
            shape = arg.shape
            if (
                len(shape) != 4
                or shape[1] != kv_heads
                or shape[3] != head_dim
                or not isinstance(shape[2], int)
            ):
                refuse(f"past_{kind}.{i} is {shape}, not [1, {kv_heads}, max_context, {head_dim}]")
    if f"past_key.{layers}" in io:
        refuse(f"more than {layers} layers")
    for name, width in widths.items():
        if name not in io or io[name].shape[-1] != width:
            shape = io[name].shape if name in io else "missing"
            refuse(f"{name} is {shape}, its last dimension should be {width}")


class OrtGraphSession:
    def __init__(
        self,
        path: Path,
        layers: int,
        kv_heads: int,
        head_dim: int,
        threads: int,
        plugin_op: bool = False,
        device: str = "cpu",
        device_cache: bool | None = None,
        compact_graph: Path | None = None,
        widths: Mapping[str, int] | None = None,
    ):
        """plugin_op: the graph is TensorRT-flavoured; its eaglex::TreeAttention nodes run the numpy
        reference of the op (plugins/README.md), registered through onnxruntime-extensions.
        device: "cpu" or "cuda" (resolve_device). device_cache: keep the KV cache in an onnxruntime buffer
        compacted by `compact_graph` (default: on a GPU only; True on the CPU runs that path anywhere).
        widths: the last dimension the manifest promises for inputs and outputs (logits: the vocabulary)."""
        options = session_options(threads)
        if device == "cpu":
            cpu_kernels(options)
        self.plugin_op = plugin_op
        if plugin_op:
            from eaglex.plugins.tree_attention.onnxruntime_op import library_path

            options.register_custom_ops_library(library_path())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        except Exception as e:  # onnxruntime raises its own types with multi-line messages
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EaglexError(f"onnxruntime cannot load {path} ({first}); re-run eaglex export") from None
        if device == "cuda" and self.session.get_providers()[0] != CUDA:
            raise EaglexError(
                "onnxruntime could not start its CUDA execution provider (no GPU visible, or CUDA/cuDNN "
                "libraries missing): check nvidia-smi and onnxruntime-gpu's CUDA version, or use --device cpu"
            )
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        check_graph(path, {**inputs, **outputs}, layers, kv_heads, head_dim, widths or {})
        mask_input = "tree_mask" if plugin_op else "attention_bias"
        if mask_input not in inputs:
            flavour = "tensorrt" if plugin_op else "onnxruntime"
            raise EaglexError(
                f"{path} has no {mask_input} input, which {flavour}-flavoured graphs take: the manifest's "
                "backend does not match the graphs; re-export the artifact"
            )
        self.input_types = {name: NUMPY_TYPES.get(i.type) for name, i in inputs.items()}
        self.capacity = int(inputs["past_key.0"].shape[2])
        dtype = self.input_types["past_key.0"]
        self.output_names = [o.name for o in self.session.get_outputs() if not o.name.startswith("present_")]
        self.binding = self.session.io_binding()
        # Outputs keep the position of their first binding: the named ones come first, then the caches.
        for name in self.output_names:
            self.binding.bind_output(name)
        if device_cache if device_cache is not None else device != "cpu":
            if compact_graph is None or not compact_graph.is_file():
                raise EaglexError(NO_COMPACT_GRAPH)
            self.cache: KVCache | DeviceKVCache = DeviceKVCache(
                layers, kv_heads, self.capacity, head_dim, dtype, device, compact_graph, providers(device)
            )
            for i in range(layers):
                for k, kind in enumerate(("key", "value")):
                    where = (device, 0, dtype, self.cache.layer_shape, self.cache.pointer(i, k))
                    self.binding.bind_input(f"past_{kind}.{i}", *where)
                    self.binding.bind_output(f"present_{kind}.{i}", *where)
        else:
            self.cache = KVCache(layers, kv_heads, self.capacity, head_dim, dtype)
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
            # float16 graphs take float16 activations; the runtime itself works in float32.
            self.binding.bind_cpu_input(name, np.ascontiguousarray(array, dtype=self.input_types.get(name)))
        for name in self.output_names:
            self.binding.bind_output(name)
        self.session.run_with_iobinding(self.binding)
        # Only the named outputs, from the raw vector: get_outputs() wraps every cache too (2 x layers
        # Python objects, ~45 us a pass for SmolLM2's target against ~2 us for this).
        values = self.binding.get_outputs_as_ortvaluevector()
        outputs = [values[i].numpy() for i in range(len(self.output_names))]
        return {
            name: out.astype(np.float32) if out.dtype == np.float16 else out
            for name, out in zip(self.output_names, outputs, strict=True)
        }

    def keep(self, start: int, slots: np.ndarray) -> None:
        self.cache.keep(start, slots)

    def move(self, slots: np.ndarray, to: np.ndarray) -> None:
        self.cache.move(slots, to)
