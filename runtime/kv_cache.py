"""A preallocated KV cache in host memory, updated in place and compacted after each verify pass."""

from __future__ import annotations

import numpy as np


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
        n = len(slots)
        if n and not (slots[0] == start and slots[-1] == start + n - 1):
            self.data[..., start : start + n, :] = self.data[..., slots, :]
