"""Which draft tree a serving pass uses for its batch size: rows per pass are a budget shared by speculation
and batching, so the larger the batch, the smaller the tree that pays (down to none: plain decoding).

`eaglex tune --batch-sizes` measures the packed passes and stores the best tree per batch size in the
manifest (`tree.by_batch`, runtime/manifest.py); the scheduler looks the current batch up here each pass.
"""

from __future__ import annotations

import dataclasses

from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.manifest import BatchTree


def tuned_tree(trees: tuple[BatchTree, ...], batch: int) -> BatchTree | None:
    """The entry for the largest tabulated batch size at or below `batch` (the smallest entry below the
    table's range: its trees are the largest, and rows_per_pass still bounds them); None without a table."""
    at_or_below = [tree for tree in trees if tree.batch <= batch]
    return at_or_below[-1] if at_or_below else (trees[0] if trees else None)


def follow(config: GenerationConfig, tree: BatchTree) -> GenerationConfig:
    """The request's settings with the tuned tree in place of the artifact's default one."""
    shape = {"top_k": tree.top_k, "depth": tree.depth, "total_tokens": tree.total_tokens}
    return dataclasses.replace(config, **shape, speculative=tree.speculative)


def describe(trees: tuple[BatchTree, ...], rows_per_pass: int) -> str:
    """One line: the tree per tabulated batch size, as the scheduler will cut it to the rows per pass."""
    if not trees:
        return "trees: the artifact's default, cut to the rows per pass (eaglex tune sizes them per batch)"
    shapes = [
        f"{t.batch}: k{t.top_k} d{t.depth} t{min(t.total_tokens, max(1, rows_per_pass // t.batch))}"
        if t.speculative
        else f"{t.batch}: plain"
        for t in trees
    ]
    return "trees by batch size (top_k, depth, total_tokens): " + ", ".join(shapes)
