"""The one small interface every backend implements: run a graph over new rows with a KV cache in place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class GraphSession(Protocol):
    """One exported graph (target or drafter) with its own preallocated KV cache.

    Rows of a call are written to cache slots [cache_len, cache_len + S). `mask[s, j]` says whether row s
    may attend to slot j, for j < cache_len + S: a causal mask for prefill, a tree mask for verification.
    """

    capacity: int

    def run(self, feeds: Mapping[str, np.ndarray], cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Runs the graph; `feeds` holds the graph inputs other than the cache and mask encodings."""
        ...

    def keep(self, start: int, slots: np.ndarray) -> None:
        """Compacts the cache: rows `slots` move to start, start+1, ... (the accepted path of a tree)."""
        ...

    def move(self, slots: np.ndarray, to: np.ndarray) -> None:
        """Copies rows `slots` to rows `to`, two disjoint sets (packed batches, runtime/batch.py)."""
        ...
