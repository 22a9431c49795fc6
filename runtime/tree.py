"""The EAGLE-2/3 dynamic draft tree: grown level by level from the drafter's top-k, then pruned to the
nodes most likely to be accepted (EAGLE-2, arXiv 2406.16858; EAGLE-3, arXiv 2503.01840)."""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DraftTree:
    """A flattened draft tree, verified by the target in one pass.

    Node 0 is the root: the last committed token, whose target output has not been computed yet.
    Parents precede children, so one forward walk over the nodes sees every parent before its children.
    A node's RoPE position is the committed length plus its depth.
    """

    tokens: np.ndarray  # int64 [T]
    parents: np.ndarray  # int64 [T]; parents[0] == -1, parents[i] < i
    depths: np.ndarray  # int64 [T]; depths[0] == 0, depths[i] == depths[parents[i]] + 1

    def __post_init__(self) -> None:
        # Acceptance and the masks rely on this shape; a malformed tree would verify wrong tokens silently.
        t, p, d = self.tokens, self.parents, self.depths
        if not (
            t.ndim == p.ndim == d.ndim == 1
            and len(t) == len(p) == len(d) >= 1
            and p[0] == -1
            and d[0] == 0
            and np.all((p[1:] >= 0) & (p[1:] < np.arange(1, len(p))))
            and np.array_equal(d[1:], d[p[1:]] + 1)
        ):
            raise ValueError(f"malformed draft tree: parents={p.tolist()} depths={d.tolist()}")

    def __len__(self) -> int:
        return len(self.tokens)

    def attention_mask(self) -> np.ndarray:
        """bool [T, T]: row i is True at i and at its ancestors (the tree part of the target's mask)."""
        n = len(self.tokens)
        rows = np.arange(n)
        up = np.maximum(self.parents, 0)  # the root is its own parent, so climbing past it stays there
        mask = np.zeros((n, n), dtype=bool)
        node = rows
        for _ in range(int(self.depths.max()) + 1):
            mask[rows, node] = True
            node = up[node]
        return mask

    def truncate(self, size: int) -> "DraftTree":
        """The first `size` nodes (e.g. what still fits the KV cache): a prefix is a tree, since parents
        precede children."""
        if size < 1:
            raise ValueError(f"a draft tree keeps at least its root, got size {size}")
        if size >= len(self.tokens):
            return self  # frozen: nothing to copy or check again
        return DraftTree(self.tokens[:size], self.parents[:size], self.depths[:size])

    def children(self, node: int) -> np.ndarray:
        """Indices of a node's children, ascending: the order in which acceptance tries siblings."""
        return np.flatnonzero(self.parents == node)


def chain_tree(tokens: np.ndarray | list[int]) -> DraftTree:
    """A single path, root first (plain speculative decoding, and handy in tests)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = np.arange(len(tokens), dtype=np.int64)
    return DraftTree(tokens=tokens, parents=n - 1, depths=n)


class DraftTreeBuilder:
    """Grows the EAGLE-2/3 dynamic tree level by level.

    Every candidate the drafter proposes enters a pool with its cumulative log-probability (score);
    only the best `top_k` of each level (the frontier) are expanded by the next drafter call. `build`
    then keeps the best-scoring pool entries, which approximates the nodes most likely to be accepted.
    """

    def __init__(self, root_token: int, top_k: int) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.root_token = int(root_token)
        self.top_k = top_k
        # The pool, one array per level, in insertion order. Parents are pool indices, -1 = root.
        self._tokens: list[np.ndarray] = []
        self._parents: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._depths: list[np.ndarray] = []
        self._size = 0
        # The rows of the next drafter call: the root first, then each level's frontier.
        self._frontier = np.array([-1], dtype=np.int64)
        self._frontier_scores = np.zeros(1)
        self._scratch = np.zeros((1, 0), dtype=bool)

    def add_level(self, logprobs: np.ndarray, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add the drafter's top-k of every frontier row; return the next frontier.

        logprobs, token_ids: [n_rows, k], row r = the row fed to the last drafter call (level 1: one row,
        the last committed position; later: the frontier in the order this method last returned it).
        Returns (frontier tokens [top_k], parent_rows [top_k]): the best top_k candidates by cumulative
        score, best first, and the input row each came from (whose drafter hidden feeds its next call).
        """
        logprobs = np.asarray(logprobs, dtype=np.float64)
        token_ids = np.asarray(token_ids, dtype=np.int64)
        n_rows, k = logprobs.shape
        if token_ids.shape != logprobs.shape or n_rows != len(self._frontier) or n_rows * k < self.top_k:
            raise ValueError(
                f"add_level expects [{len(self._frontier)}, k] log-probs and ids with "
                f"{len(self._frontier)} * k >= top_k={self.top_k}, got {logprobs.shape} and {token_ids.shape}"
            )
        # A log-prob is <= 0; clamping rounding noise keeps every child's score <= its parent's, which
        # is what makes the set kept by build() closed under ancestors.
        scores = (self._frontier_scores[:, None] + np.minimum(logprobs, 0.0)).ravel()
        self._tokens.append(token_ids.ravel())
        self._parents.append(np.repeat(self._frontier, k))
        self._scores.append(scores)
        self._depths.append(np.full(len(scores), len(self._depths) + 1, dtype=np.int64))

        best = np.argsort(-scores, kind="stable")[: self.top_k]
        parent_rows = best // k
        self._frontier = self._size + best
        self._frontier_scores = scores[best]
        self._size += len(scores)
        # A new frontier node sees the scratch rows its parent saw (its ancestors) plus its own new row.
        self._scratch = np.concatenate([self._scratch[parent_rows], np.eye(self.top_k, dtype=bool)], axis=1)
        return token_ids.ravel()[best], parent_rows

    def worth_growing(self, min_grow_probability: float) -> bool:
        """Whether the frontier's likeliest path is at least `min_grow_probability` likely: below it, the
        next level's nodes (less likely still) are not worth a drafter call."""
        return self._frontier_scores[0] >= log_probability(min_grow_probability)

    def depth_reached(self, min_grow_probability: float, max_depth: int) -> int:
        """The levels a growth to `max_depth` would have built had it stopped at the first level not
        `worth_growing`: a pool grown to full depth answers for any threshold (`eaglex tune`). A level's
        best score is its frontier's, since the frontier is the level's top entries."""
        floor = log_probability(min_grow_probability)
        for level, scores in enumerate(self._scores[:max_depth], start=1):
            if scores.max() < floor:
                return level
        return min(len(self._scores), max_depth)

    def scratch_mask(self) -> np.ndarray:
        """bool [top_k, n_levels * top_k]: which drafter scratch rows the current frontier may attend to.

        Scratch rows are in drafter-call order (level 1's frontier is rows 0..k-1, level 2's k..2k-1, ...,
        the current frontier the last k). Each frontier node sees its ancestors' rows and its own.
        """
        return self._scratch.copy()

    def build(
        self, total_tokens: int, max_depth: int | None = None, min_path_probability: float = 0.0
    ) -> DraftTree:
        """The tree to verify: the root plus the best `total_tokens - 1` pool entries, of those whose path
        from the root the drafter gives at least `min_path_probability` (a node less likely to be accepted
        costs a verify row for little: the tree then shrinks where the drafter is unsure).

        The sort is stable and a parent enters the pool before its children, so on equal scores the parent
        ranks first; with scores non-increasing along every path, the kept set is closed under ancestors.
        Kept entries stay in pool order, which puts parents before children.
        `max_depth` considers only the first levels: the tree a shallower growth would have given, since
        deeper levels never change the shallower ones (`eaglex tune` evaluates many shapes from one pool).
        """
        if total_tokens < 1:
            raise ValueError(f"total_tokens must be >= 1, got {total_tokens}")
        if not self._size:
            return chain_tree([self.root_token])
        levels = slice(0, max_depth)
        tokens, parents, scores, depths = (
            np.concatenate(a[levels]) for a in (self._tokens, self._parents, self._scores, self._depths)
        )
        # A score cut keeps the set closed under ancestors too: a child never scores above its parent.
        likely = np.flatnonzero(scores >= log_probability(min_path_probability))
        keep = np.sort(likely[np.argsort(-scores[likely], kind="stable")][: total_tokens - 1])
        # Pool index -> tree index, shifted by one so that the root (pool index -1) maps to node 0.
        tree_index = np.full(self._size + 1, -1, dtype=np.int64)
        tree_index[0] = 0
        tree_index[keep + 1] = np.arange(1, len(keep) + 1)
        return DraftTree(
            tokens=np.concatenate([[self.root_token], tokens[keep]]).astype(np.int64),
            parents=np.concatenate([[-1], tree_index[parents[keep] + 1]]).astype(np.int64),
            depths=np.concatenate([[0], depths[keep]]).astype(np.int64),
        )


def log_probability(probability: float) -> float:
    """The score a probability threshold compares with (0: -inf, no cut)."""
    return math.log(probability) if probability > 0 else -math.inf
