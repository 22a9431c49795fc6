"""TensorRT backend: the engines `eaglex build` made, behind the same GraphSession interface.

Each graph keeps its KV cache in one device allocation, [layers, 2, kv_heads, M, head_dim], bound as both
past_* and present_* of every layer: the tree-attention plugin writes new rows in place (its outputs alias
its inputs), and `keep` compacts accepted rows with strided device-to-device copies. One execution
context per optimisation profile (prefill, decode); each call picks the last profile its shapes fit.
Calls are `execute_async_v3` on one stream; with cuda_graphs, a call whose shapes were seen before
replays a captured CUDA graph (inputs are copied to fixed device buffers first, and the plugin reads
cache_len and mask_start from device memory, so a replay sees the new values).

Needs tensorrt and cuda-python (pip install 'eaglex[tensorrt]'); both are imported only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eaglex.errors import EaglexError
from eaglex.plugins.tree_attention.mask import mask_feeds
from eaglex.runtime.manifest import Manifest

if TYPE_CHECKING:
    from eaglex.runtime.backends.tensorrt_rtx import RtxGraphSession

INSTALL = (
    "the TensorRT backend needs tensorrt and cuda-python on a machine with an NVIDIA GPU: "
    "pip install 'eaglex[tensorrt]' (TensorRT wheels come from pypi.nvidia.com)"
)


def _modules() -> tuple[Any, Any]:
    try:
        import tensorrt
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise EaglexError(INSTALL) from None
    return tensorrt, cudart


def _numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    if dtype == trt.bfloat16:  # numpy has no bfloat16; ml_dtypes (a dependency of onnx) does
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(trt.nptype(dtype))


def load_plugin_library(trt: Any, path: Path) -> None:
    """Registers the tree-attention plugin once per process: the registry refuses a second library that
    brings an already registered creator."""
    registry = trt.get_plugin_registry()
    registered = registry.get_creator("TreeAttention", "1", "eaglex") is not None
    if not registered and registry.load_library(str(path)) is None:
        raise EaglexError(f"TensorRT cannot load the plugin library {path}: rebuild with eaglex build")


class _Cuda:
    """cuda-python's runtime calls return (error, *values): raise on error, unwrap the values."""

    def __init__(self, cudart: Any):
        self.rt = cudart

    def __call__(self, function: str, *args: Any) -> Any:
        error, *values = getattr(self.rt, function)(*args)
        if error != self.rt.cudaError_t.cudaSuccess:
            raise EaglexError(f"CUDA {function} failed: {self.rt.cudaGetErrorString(error)[1].decode()}")
        return values[0] if len(values) == 1 else tuple(values)


class TrtGraphSession:
    @classmethod
    def from_manifest(
        cls, manifest: Manifest, file: str, layers: int, kv_heads: int, head_dim: int
    ) -> TrtGraphSession | RtxGraphSession:
        """The engine of `file`'s graph; engines of TensorRT for RTX open as an RtxGraphSession."""
        engines = manifest.engines
        if manifest.backend != "tensorrt" or engines is None:
            raise EaglexError(
                f"{manifest.root} has no TensorRT engines: export it with --backend tensorrt, "
                f"then run eaglex build {manifest.root}"
            )
        if engines.flavour == "tensorrt-rtx":
            from eaglex.runtime.backends.tensorrt_rtx import RtxGraphSession

            return RtxGraphSession.from_manifest(manifest, file, layers, kv_heads, head_dim)
        graph = engines.target if file == manifest.target.file else engines.drafter
        if graph is None:
            raise EaglexError(f"{manifest.root} has no engine for {file}: run eaglex build {manifest.root}")
        return cls(
            manifest.path(graph.file),
            manifest.path(engines.plugin_library),
            layers,
            kv_heads,
            head_dim,
        )

    def __init__(
        self,
        engine_path: Path,
        plugin_library: Path,
        layers: int,
        kv_heads: int,
        head_dim: int,
        cuda_graphs: bool = True,
    ):
        trt, cudart = _modules()
        self.trt, self.cuda = trt, _Cuda(cudart)
        logger = trt.Logger(trt.Logger.WARNING)
        load_plugin_library(trt, plugin_library)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EaglexError(
                f"TensorRT cannot load {engine_path}: rebuild it with eaglex build on this machine"
            )
        engine = self.engine
        self.stream = int(self.cuda("cudaStreamCreate"))  # TensorRT takes streams as integers
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n] and not n.startswith("past_")]
        self.outputs = [n for n in names if not is_input[n] and not n.startswith("present_")]
        self.dtypes = {n: _numpy_dtype(trt, engine.get_tensor_dtype(n)) for n in names}

        shape = tuple(engine.get_tensor_shape("past_key.0"))  # [1, kv, M, d], static
        self.capacity, self.layers = int(shape[2]), layers
        item = self.dtypes["past_key.0"].itemsize
        self.plane = self.capacity * head_dim * item  # one head's rows of one layer's keys or values
        self.row = head_dim * item
        self.planes = layers * 2 * kv_heads
        self.cache = self.cuda("cudaMalloc", self.planes * self.plane)
        self.cuda("cudaMemsetAsync", self.cache, 0, self.planes * self.plane, self.stream)

        self.contexts = []
        for profile in range(engine.num_optimization_profiles):
            context = engine.create_execution_context()
            context.set_optimization_profile_async(profile, self.stream)
            for i in range(layers):
                for k, kind in enumerate(("key", "value")):
                    address = self.cache + (2 * i + k) * kv_heads * self.plane
                    context.set_tensor_address(f"past_{kind}.{i}", address)
                    context.set_tensor_address(f"present_{kind}.{i}", address)  # written in place
            self.contexts.append(context)
        self.buffers: dict[tuple[int, str], tuple[int, int]] = {}  # (profile, name) -> (address, bytes)
        self.host_values: dict[str, np.ndarray] = {}  # shape-tensor inputs live in host memory
        self.graphs: dict[tuple, Any] = {}
        self.seen: set[tuple] = set()
        self.cuda_graphs = cuda_graphs

    def _profile(self, arrays: Mapping[str, np.ndarray]) -> int:
        return pick_profile(self.engine, len(self.contexts), arrays)

    def _buffer(self, profile: int, name: str, nbytes: int) -> int:
        address, grown = grow_buffer(self.cuda, self.buffers, self.contexts[profile], profile, name, nbytes)
        if grown:  # forget the CUDA graphs that captured the old address
            self.graphs = {k: g for k, g in self.graphs.items() if k[0] != profile}
        return address

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        total = mask.shape[1]
        if total > self.capacity:
            raise EaglexError(
                f"{total} rows exceed the KV cache of {self.capacity}; re-export with a larger --max-context"
            )
        given = {**feeds, **mask_feeds(mask, cache_len)}
        arrays = {n: np.ascontiguousarray(given[n], dtype=self.dtypes[n]) for n in self.inputs}
        profile = self._profile(arrays)
        context = self.contexts[profile]
        h2d = self.cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in arrays.items():
            if self.engine.is_shape_inference_io(name):
                self.host_values[name] = array  # kept alive: TensorRT reads it at enqueue
                context.set_tensor_address(name, array.ctypes.data)
                continue
            context.set_input_shape(name, array.shape)
            address = self._buffer(profile, name, array.nbytes)
            self.cuda("cudaMemcpyAsync", address, array.ctypes.data, array.nbytes, h2d, self.stream)
        results = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            results[name] = np.empty(shape, self.dtypes[name])
            self._buffer(profile, name, results[name].nbytes)
        self._execute(profile, arrays)
        d2h = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in results.items():
            address, _ = self.buffers[(profile, name)]
            self.cuda("cudaMemcpyAsync", array.ctypes.data, address, array.nbytes, d2h, self.stream)
        self.cuda("cudaStreamSynchronize", self.stream)
        # The runtime's numpy code works in float32 whatever precision the engine computes in.
        return {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in results.items()}

    def _execute(self, profile: int, arrays: Mapping[str, np.ndarray]) -> None:
        context = self.contexts[profile]
        key = (
            profile,
            *(
                (n, a.shape, a.tobytes() if self.engine.is_shape_inference_io(n) else b"")
                for n, a in arrays.items()
            ),
        )
        rt = self.cuda.rt
        if not self.cuda_graphs or key not in self.seen:  # the first call of a shape runs directly
            self.seen.add(key)
            if not context.execute_async_v3(self.stream):
                raise EaglexError("TensorRT execute_async_v3 failed (see its log above)")
            return
        if key not in self.graphs:
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            self.cuda("cudaStreamBeginCapture", self.stream, mode)
            context.execute_async_v3(self.stream)
            graph = self.cuda("cudaStreamEndCapture", self.stream)
            self.graphs[key] = self.cuda("cudaGraphInstantiate", graph, 0)
        self.cuda("cudaGraphLaunch", self.graphs[key], self.stream)

    def keep(self, start: int, slots: np.ndarray) -> None:
        # Row slots[i] of every plane moves to start + i; slots ascend, so no source is overwritten first.
        d2d = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for i, slot in enumerate(int(s) for s in slots):
            if slot != start + i:
                self.cuda(
                    "cudaMemcpy2DAsync",
                    self.cache + (start + i) * self.row,
                    self.plane,
                    self.cache + slot * self.row,
                    self.plane,
                    self.row,
                    self.planes,
                    d2d,
                    self.stream,
                )


def pick_profile(engine: Any, profiles: int, arrays: Mapping[str, np.ndarray]) -> int:
    """The last optimisation profile whose ranges hold every input's shape (decode before prefill)."""
    for profile in reversed(range(profiles)):
        fits = True
        for name, array in arrays.items():
            if engine.is_shape_inference_io(name):
                continue
            low, _, high = engine.get_tensor_profile_shape(name, profile)
            fits &= all(a <= s <= b for a, s, b in zip(low, array.shape, high, strict=True))
        if fits:
            return profile
    shapes = {n: a.shape for n, a in arrays.items()}
    raise EaglexError(
        f"no optimisation profile of the engine takes the shapes {shapes}: rebuild with "
        "eaglex build --max-prompt, or use a smaller tree"
    )


def grow_buffer(
    cuda: Any,
    buffers: dict[tuple[int, str], tuple[int, int]],
    context: Any,
    profile: int,
    name: str,
    nbytes: int,
) -> tuple[int, bool]:
    """The device buffer of input or output `name` in `profile`, and whether it had to grow: a buffer is
    reused while `nbytes` fit, else freed and reallocated at least twice as large and bound anew."""
    address, size = buffers.get((profile, name), (0, 0))
    if nbytes <= size:
        return address, False
    if address:
        cuda("cudaFree", address)
    size = max(nbytes, 2 * size, 256)
    address = cuda("cudaMalloc", size)
    buffers[(profile, name)] = (address, size)
    context.set_tensor_address(name, address)
    return address, True
