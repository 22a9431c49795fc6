"""TensorRT for RTX backend: the engines of `eaglex build --flavour tensorrt-rtx`, behind GraphSession.

The engines take the standard-attention graphs (exporter/standard_attention.py): per layer
past_key.i, past_value.i [1, P, kv·D] in, new_key.i, new_value.i [1, S, kv·D] out, and the tree mask as
attn_mask, bool [S, P + S]. The KV cache is one device allocation of [layers, 2, M, kv·D], a token per
row, so the first P rows of a layer's keys are a contiguous prefix, bound as past_key.i, and new_key.i
is bound at row P of the same plane: the engine writes the new rows in place and nothing is copied.
`keep` moves accepted rows with one strided copy per row over all planes. One execution context per
optimisation profile; each call takes the last profile its shapes fit (decode before prefill).

Which engine: the one built for this GPU's compute capability. TensorRT for RTX serves RTX and
Ampere-class GPUs only (no sm90: H100 and H200 take datacenter TensorRT, `--flavour tensorrt`).
Needs tensorrt-rtx and cuda-python (pip install 'eaglex[tensorrt-rtx]'), imported only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eaglex.errors import EaglexError
from eaglex.runtime.backends.tensorrt import _Cuda, _numpy_dtype, grow_buffer, pick_profile
from eaglex.runtime.manifest import EngineFile, Manifest

INSTALL = (
    "TensorRT for RTX engines need tensorrt-rtx and cuda-python on a machine with an RTX or "
    "Ampere-class NVIDIA GPU: pip install 'eaglex[tensorrt-rtx]'"
)


def _modules() -> tuple[Any, Any]:
    try:
        import tensorrt_rtx
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise EaglexError(INSTALL) from None
    return tensorrt_rtx, cudart


def gpu_capability(cudart: Any) -> str:
    """The visible GPU as smXY, or one line saying that there is none."""
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        raise EaglexError(
            "no CUDA GPU is visible (no NVIDIA driver or no GPU): TensorRT for RTX engines run on an RTX "
            "or Ampere-class GPU; on this machine use --backend onnxruntime"
        )
    error, props = cudart.cudaGetDeviceProperties(0)
    if error != cudart.cudaError_t.cudaSuccess:
        raise EaglexError(f"CUDA cannot describe GPU 0: {cudart.cudaGetErrorString(error)[1].decode()}")
    return f"sm{props.major}{props.minor}"


def pick_engine(graph: EngineFile, built_for: tuple[str, ...], capability: str) -> str:
    """The engine file of `graph` (a manifest record) for a GPU of `capability`, or why there is none."""
    files = graph.files or {}
    if capability in files:
        return files[capability]
    if capability.startswith(("sm90", "sm100", "sm103", "sm110")):
        raise EaglexError(
            f"this GPU is {capability} (a datacenter GPU such as the H100, H200 or B200), which TensorRT "
            "for RTX does not serve: build datacenter TensorRT engines on it with eaglex build --flavour "
            "tensorrt"
        )
    raise EaglexError(
        f"the engines were built for {', '.join(built_for)}, not for this GPU ({capability}): run eaglex "
        f"build ARTIFACT --flavour tensorrt-rtx --compute-capability {capability}"
    )


class RtxGraphSession:
    @classmethod
    def from_manifest(
        cls, manifest: Manifest, file: str, layers: int, kv_heads: int, head_dim: int
    ) -> RtxGraphSession:
        record = manifest.engines
        assert record is not None
        trt, cudart = _modules()
        capability = gpu_capability(cudart)
        graph = record.target if file == manifest.target.file else record.drafter
        if graph is None:
            raise EaglexError(f"{manifest.root} has no engine for {file}: run eaglex build {manifest.root}")
        engine = manifest.path(pick_engine(graph, record.compute_capabilities, capability))
        return cls(trt, cudart, engine, layers, kv_heads * head_dim, manifest.target.max_context)

    def __init__(self, trt: Any, cudart: Any, engine_path: Path, layers: int, kv_width: int, capacity: int):
        self.trt, self.cuda = trt, _Cuda(cudart)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            engine_path.read_bytes()
        )
        if self.engine is None:
            raise EaglexError(f"TensorRT for RTX cannot load {engine_path} (see its log above): rebuild it")
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n] and not n.startswith("past_")]
        self.outputs = [n for n in names if not is_input[n] and not n.startswith("new_")]
        self.dtypes = {n: _numpy_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.capacity, self.layers, self.kv_width = capacity, layers, kv_width
        self.row = kv_width * self.dtypes["past_key.0"].itemsize
        self.plane = self.capacity * self.row
        self.stream = int(self.cuda("cudaStreamCreate"))
        self.cache = self.cuda("cudaMalloc", 2 * layers * self.plane)
        self.contexts = [engine.create_execution_context() for _ in range(engine.num_optimization_profiles)]
        for profile, context in enumerate(self.contexts):
            context.set_optimization_profile_async(profile, self.stream)
        self.buffers: dict[tuple[int, str], tuple[int, int]] = {}  # (profile, name) -> (address, bytes)
        self.host_values: dict[str, np.ndarray] = {}  # shape-tensor inputs live in host memory

    def _profile(self, arrays: Mapping[str, np.ndarray]) -> int:
        return pick_profile(self.engine, len(self.contexts), arrays)

    def _buffer(self, profile: int, name: str, nbytes: int) -> int:
        return grow_buffer(self.cuda, self.buffers, self.contexts[profile], profile, name, nbytes)[0]

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        total = mask.shape[1]
        if total > self.capacity:
            raise EaglexError(
                f"{total} rows exceed the KV cache of {self.capacity}; re-export with a larger --max-context"
            )
        given = {**feeds, "attn_mask": mask}
        arrays = {n: np.ascontiguousarray(given[n], dtype=self.dtypes[n]) for n in self.inputs}
        profile = self._profile(arrays)
        context = self.contexts[profile]
        for i in range(self.layers):
            for k, kind in enumerate(("key", "value")):
                plane = self.cache + (2 * i + k) * self.plane
                context.set_input_shape(f"past_{kind}.{i}", (1, cache_len, self.kv_width))
                context.set_tensor_address(f"past_{kind}.{i}", plane)  # rows [0, P)
                context.set_tensor_address(f"new_{kind}.{i}", plane + cache_len * self.row)  # rows [P, P + S)
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
            results[name] = np.empty(tuple(context.get_tensor_shape(name)), self.dtypes[name])
            self._buffer(profile, name, results[name].nbytes)
        if not context.execute_async_v3(self.stream):
            raise EaglexError("TensorRT for RTX execute_async_v3 failed (see its log above)")
        d2h = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in results.items():
            address, _ = self.buffers[(profile, name)]
            self.cuda("cudaMemcpyAsync", array.ctypes.data, address, array.nbytes, d2h, self.stream)
        self.cuda("cudaStreamSynchronize", self.stream)
        return {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in results.items()}

    def keep(self, start: int, slots: np.ndarray) -> None:
        # Row slots[i] of every plane moves to row start + i; slots ascend, so no source is overwritten first.
        d2d = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for i, slot in enumerate(int(s) for s in slots):
            if slot != start + i:
                to, frm = self.cache + (start + i) * self.row, self.cache + slot * self.row
                pitch, planes = self.plane, 2 * self.layers  # one row from each plane, a plane apart
                self.cuda("cudaMemcpy2DAsync", to, pitch, frm, pitch, self.row, planes, d2d, self.stream)
