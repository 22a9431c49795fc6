"""Which draft tree a serving pass uses for its batch size: rows per pass are a budget shared by speculation
and batching, so the larger the batch, the smaller the tree that pays (down to none: plain decoding).

`eaglex tune --batch-sizes` measures the packed passes and stores the best tree per batch size in the
manifest (`tree.by_batch`, runtime/manifest.py); the scheduler looks the current batch up here each pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eaglex.runtime.batch import Sequence
from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.manifest import BatchTree
from eaglex.runtime.ngram import graft, lookup


def tuned_tree(trees: tuple[BatchTree, ...], batch: int) -> BatchTree | None:
    """The entry for the largest tabulated batch size at or below `batch` (the smallest entry below the
    table's range: its trees are the largest, and rows_per_pass still bounds them); None without a table."""
    at_or_below = [tree for tree in trees if tree.batch <= batch]
    return at_or_below[-1] if at_or_below else (trees[0] if trees else None)


def follow(config: GenerationConfig, tree: BatchTree) -> GenerationConfig:
    """The request's settings with the tuned tree in place of the artifact's default one; the default's
    prompt lookup (`config.ngram`, the manifest's) stays only where that tree speculates: a batch size
    that tune found better served plain has no rows to spare for lookup's branch either. The default
    tree's probability cuts go with its shape: the batch trees were tuned without them."""
    shape = {
        "top_k": tree.top_k,
        "depth": tree.depth,
        "total_tokens": tree.total_tokens,
        "min_path_probability": 0.0,
        "min_grow_probability": 0.0,
    }
    return dataclasses.replace(
        config, **shape, speculative=tree.speculative, ngram=config.ngram if tree.speculative else 0
    )


def row_share(rows_per_pass: int, decoding: int) -> int:
    """The most rows one decoding sequence's tree may take, so that a pass stays near `rows_per_pass`."""
    return max(1, rows_per_pass // max(decoding, 1))


def tree_sizes(decoding: list[Sequence], rows_per_pass: int) -> list[int]:
    """Drafted nodes per tree: each sequence's own setting, cut to its share of the pass's rows; 1 (plain
    decoding) when speculation is off or the batch leaves no room for a tree."""
    share = row_share(rows_per_pass, len(decoding))
    return [min(s.config.total_tokens, share) if s.config.speculative else 1 for s in decoding]


def graft_lookups(decoding: list[Sequence], rows_per_pass: int) -> None:
    """Prompt lookup (GenerationConfig.ngram) as in Engine.generate: the tokens that followed the context's
    last n-gram join each asking sequence's tree, drafted or its root alone, within its row share."""
    share = row_share(rows_per_pass, len(decoding))
    for seq in decoding:
        if seq.config.ngram and seq.tree is not None and len(seq.tree) < share:
            context = np.asarray(seq.prompt + seq.generated, np.int64)
            seq.tree = graft(seq.tree, lookup(context, seq.config.ngram)).truncate(share)


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
