"""The op's compact tree mask: columns [0, mask_start) are visible to every row, the rest is bit-packed.

Numpy only: the runtime encodes masks with it, the reference decodes them. Bit (c - mask_start) % 32 of
word (c - mask_start) // 32 in row s is set when row s may attend to cache column c (plugins/README.md).
"""

from __future__ import annotations

import numpy as np


def encode_mask(mask: np.ndarray, cache_len: int) -> tuple[int, np.ndarray]:
    """bool mask [S, L] of a call that writes rows at [cache_len, L) -> (mask_start, tree_mask [1, S, W]).

    mask_start is the first column some row may not see, capped at cache_len so that W = ceil((L -
    mask_start) / 32) depends only on S for a verify pass: the shapes, and so a captured CUDA graph,
    stay the same from step to step.
    """
    rows, total = mask.shape
    hidden = ~mask.all(axis=0)
    start = min(int(hidden.argmax()) if hidden.any() else total, cache_len)
    width = -(-(total - start) // 32)
    packed = np.zeros((rows, 4 * width), np.uint8)
    bits = np.packbits(mask[:, start:], axis=1, bitorder="little")
    packed[:, : bits.shape[1]] = bits
    # Little-endian bytes of little-endian bit order: bit i of the int32 word is column start + 32w + i.
    return start, packed.view("<i4")[None]


def decode_mask(mask_start: int, tree_mask: np.ndarray, total: int) -> np.ndarray:
    """(mask_start, tree_mask [1, S, W]) -> bool mask [S, total]; bits past `total` are ignored."""
    words = np.ascontiguousarray(tree_mask[0], dtype="<i4")
    rows = words.shape[0]
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").astype(bool)
    mask = np.ones((rows, total), bool)
    mask[:, mask_start:] = bits[:, : total - mask_start]
    return mask


def mask_feeds(mask: np.ndarray, cache_len: int) -> dict[str, np.ndarray]:
    """The plugin flavour's mask inputs of a call (docs/ARTIFACT.md): tree_mask, cache_len, mask_start."""
    start, words = encode_mask(mask, cache_len)
    return {
        "tree_mask": words,
        "cache_len": np.array([cache_len], np.int32),
        "mask_start": np.array([start], np.int32),
    }
