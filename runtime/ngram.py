"""Prompt lookup: draft tokens copied from the context, grafted into the draft tree at no drafter cost.

Text that repeats its context (code edits, summaries, quotes) is continued by what followed the last
earlier occurrence of its final n tokens. That continuation becomes one more path from the tree's root;
verification accepts it exactly as it accepts the drafter's nodes, so output stays the target's own
(the path depends only on the committed tokens, never on the target's randomness: accept.py's proof
holds unchanged).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .tree import DraftTree


def lookup(context: np.ndarray, length: int, max_ngram: int = 3, min_ngram: int = 2) -> np.ndarray:
    """Up to `length` tokens that followed the latest earlier occurrence of the context's last n tokens,
    trying n = max_ngram down to min_ngram (a longer match predicts better); empty if none matches.

    context: int64 [L], the committed tokens, the tree's root last."""
    for n in range(min(max_ngram, len(context) - 1), min_ngram - 1, -1):
        windows = sliding_window_view(context[:-1], n)  # window i = context[i : i + n], ends before the tail
        starts = np.flatnonzero((windows == context[-n:]).all(axis=1))
        if len(starts):
            follow = starts[-1] + n  # the latest occurrence: the most recent text is the likeliest to recur
            return context[follow : follow + length].copy()
    return np.zeros(0, np.int64)


def graft(tree: DraftTree, path: np.ndarray) -> DraftTree:
    """The tree with `path` (tokens after the root) added as a branch from the root: it follows the nodes
    that already hold its tokens, and the rest become new nodes appended after the existing ones.

    Appending keeps every invariant: a new node's parent is an existing node or the new node before it,
    so parents still precede children, and its depth is its parent's plus one. No node gets two children
    with the same token (the branch reuses a matching child), so acceptance never meets a duplicate."""
    node, tokens, parents, depths = 0, [], [], []
    for token in path.tolist():
        if node < len(tree):  # still inside the existing tree: reuse a child holding the token
            kids = tree.children(node)
            match = kids[tree.tokens[kids] == token]
            if len(match):
                node = int(match[0])
                continue
        tokens.append(token)
        parents.append(node)
        depths.append((tree.depths[node] if node < len(tree) else depths[-1]) + 1)
        node = len(tree) + len(tokens) - 1
    if not tokens:
        return tree
    return DraftTree(
        np.concatenate([tree.tokens, np.asarray(tokens, np.int64)]),
        np.concatenate([tree.parents, np.asarray(parents, np.int64)]),
        np.concatenate([tree.depths, np.asarray(depths, np.int64)]),
    )
