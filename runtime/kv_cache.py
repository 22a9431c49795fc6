"""Preallocated KV caches, updated in place by the graphs and compacted after each verify pass.

Two homes: host memory (numpy, for the CPU) and a device buffer that onnxruntime allocates on its
execution provider's device (a GPU's memory with the CUDA execution provider), compacted there by the
artifact's `kv_compact.onnx` graph so the cache never crosses to the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class KVCache:
    """Keys and values of every layer in one array, [layers, 2, 1, kv_heads, capacity, head_dim].

    The graph writes new rows in place (the backend binds the same buffer as past and present), so the
    cache is never copied per step. Slot j holds position j of the committed sequence; a verify pass
    writes its tree nodes after the committed slots, and `keep` moves the accepted ones down.
    """

    def __init__(self, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype: type = np.float32):
        self.data = np.zeros((layers, 2, 1, kv_heads, capacity, head_dim), dtype=dtype)
        self.capacity = capacity

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous views of layer i's keys and values, [1, kv_heads, capacity, head_dim] each."""
        return self.data[i, 0], self.data[i, 1]

    def keep(self, start: int, slots: np.ndarray) -> None:
        """Moves rows `slots` (absolute, ascending) to start, start+1, ... in one gather over all layers."""
        if _moves(start, slots):
            self.data[..., start : start + len(slots), :] = self.data[..., slots, :]

    def move(self, slots: np.ndarray, to: np.ndarray) -> None:
        """Copies rows `slots` to rows `to` (any slots; the two sets must not overlap): packed batches move
        each sequence's accepted rows from the pass's scratch rows into its own region (runtime/batch.py)."""
        if len(slots):
            self.data[..., to, :] = self.data[..., slots, :]


class DeviceKVCache:
    """The same layout in one onnxruntime buffer on `device` ("cuda", or "cpu" to run this path anywhere).

    Graph sessions bind each layer's keys and values by address inside the buffer (`pointer`)."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: type,
        device: str,
        compact_graph: Path,
        providers: list,
    ):
        self.shape = (layers, 2, 1, kv_heads, capacity, head_dim)
        self.layer_shape = self.shape[2:]
        self.dtype, self.device, self.capacity = np.dtype(dtype), device, capacity
        self.value = ort.OrtValue.ortvalue_from_numpy(np.zeros(self.shape, self.dtype), device, 0)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.compactor = ort.InferenceSession(str(compact_graph), options, providers=providers)
        self.binding = self.compactor.io_binding()
        self.binding.bind_ortvalue_input("cache", self.value)
        self.binding.bind_ortvalue_output("cache_out", self.value)

    def pointer(self, layer: int, kind: int) -> int:
        """Address of layer `layer`'s keys (kind 0) or values (kind 1)."""
        per_tensor = int(np.prod(self.layer_shape)) * self.dtype.itemsize
        return self.value.data_ptr() + (2 * layer + kind) * per_tensor

    def keep(self, start: int, slots: np.ndarray) -> None:
        if not _moves(start, slots):
            return
        self.binding.bind_cpu_input("slots", np.asarray(slots, dtype=np.int64))
        self.binding.bind_cpu_input("destinations", destinations(self.shape, start + np.arange(len(slots))))
        self.compactor.run_with_iobinding(self.binding)

    def move(self, slots: np.ndarray, to: np.ndarray) -> None:
        if len(slots):
            self.binding.bind_cpu_input("slots", np.asarray(slots, dtype=np.int64))
            self.binding.bind_cpu_input("destinations", destinations(self.shape, np.asarray(to)))
            self.compactor.run_with_iobinding(self.binding)

    def numpy(self) -> np.ndarray:
        """A host copy of the whole cache (for tests and debugging)."""
        return self.value.numpy()


def _moves(start: int, slots: np.ndarray) -> bool:
    """Whether keeping `slots` at start.. moves anything (a chain accepted in full is already in place)."""
    n = len(slots)
    return bool(n) and not (slots[0] == start and slots[-1] == start + n - 1)


def destinations(cache_shape: tuple[int, ...], to: np.ndarray) -> np.ndarray:
    """kv_compact.onnx's `destinations`: the full index [layer, kind, 0, head, to[i]] of the i-th kept
    row, for every layer, keys and values, and head."""
    layers, kinds, batch, heads = cache_shape[:4]
    grid = np.meshgrid(
        np.arange(layers),
        np.arange(kinds),
        np.arange(batch),
        np.arange(heads),
        np.asarray(to, dtype=np.int64),
        indexing="ij",
    )
    return np.stack(grid, axis=-1).astype(np.int64)
