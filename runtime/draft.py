"""The EAGLE-3 drafter at run time: keeps the committed context in its KV cache and grows a draft tree.

Row t of the drafter pairs the target's feature at position t with token t+1 (as EAGLE-3 trains it), so
after every verify pass the accepted rows are fed in one call (`extend`), whose last row already gives
the first tree level. Deeper levels feed the drafter its own hidden output and live in scratch slots
after the committed ones, overwritten next round.
"""

from __future__ import annotations

import numpy as np

from eaglex.runtime.backends.base import GraphSession
from eaglex.runtime.tree import DraftTree, DraftTreeBuilder


class EagleDrafter:
    def __init__(self, session: GraphSession, embeddings: np.ndarray, feature_width: int):
        self.session = session
        self.embeddings = embeddings  # [vocab, hidden], memory-mapped: only the rows used are read
        self.no_features = np.zeros((1, 0, feature_width), np.float32)
        self.no_hidden = np.zeros((1, 0, embeddings.shape[1]), np.float32)
        self.reset()

    def reset(self) -> None:
        self.cache_len = 0
        self.calls = 0
        self.last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _run(
        self,
        tokens: np.ndarray,
        features: np.ndarray,
        hidden: np.ndarray,
        positions: np.ndarray,
        cache_len: int,
        mask: np.ndarray,
        logit_rows: np.ndarray,
        top_k: int,
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        feeds = {
            "input_embeds": np.asarray(self.embeddings[tokens], np.float32)[None],
            "features": features,
            "hidden": hidden,
            "position_ids": positions[None],
            "logit_index": logit_rows,
            "top_k": np.array([top_k], np.int64),
        }
        return self.session.run(feeds, cache_len, mask)

    def snapshot(self) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """The committed state: restore() returns to it, e.g. to time the same call repeatedly."""
        return self.cache_len, self.last

    def restore(self, state: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray] | None]) -> None:
        """Back to a snapshot: rows committed since then lie past its cache length and are overwritten
        by the next extend, as tree scratch rows are."""
        self.cache_len, self.last = state

    def extend(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> None:
        """Commits rows (features[i], tokens[i]); the last row's top-k becomes the next tree's first level."""
        n, start = len(tokens), self.cache_len
        mask = np.tri(n, start + n, start, dtype=bool)  # all committed slots, causal among the new rows
        out = self._run(
            tokens,
            features[None],
            self.no_hidden,
            np.arange(start, start + n),
            start,
            mask,
            np.array([n - 1]),
            top_k,
        )
        self.cache_len += n
        self.last = (out["topk_logprobs"][0], out["topk_ids"][0], out["hidden_out"][0, -1:])

    def propose(
        self,
        root: int,
        top_k: int,
        depth: int,
        total_tokens: int,
        min_path_probability: float = 0.0,
        min_grow_probability: float = 0.0,
    ) -> DraftTree:
        builder = self.grow(root, top_k, depth, min_grow_probability)
        return builder.build(total_tokens, min_path_probability=min_path_probability)

    def grow(self, root: int, top_k: int, depth: int, min_grow_probability: float = 0.0) -> DraftTreeBuilder:
        """Runs the drafter level by level; the builder holds every candidate with its score. Growth stops
        early once the deepest level's likeliest path is less likely than `min_grow_probability` (a drafter
        call costs about a tenth of a target pass on a CPU)."""
        assert self.last is not None, "extend() must run before grow()"
        logprobs, ids, hidden = self.last
        builder = DraftTreeBuilder(root, top_k)
        tokens, parent_rows = builder.add_level(logprobs[:, :top_k], ids[:, :top_k])
        hidden = hidden[parent_rows]
        committed = self.cache_len
        depth = min(depth, 1 + (self.session.capacity - committed) // top_k)  # scratch must fit the cache
        for level in range(2, depth + 1):
            if not builder.worth_growing(min_grow_probability):
                break
            scratch = builder.scratch_mask()  # [k, (level-1)*k]: ancestors' rows and its own
            mask = np.concatenate([np.ones((len(tokens), committed), bool), scratch], axis=1)
            position = committed + level - 2  # a level-(d-1) node sits one past its parent's position
            out = self._run(
                tokens,
                self.no_features,
                hidden[None],
                np.full(len(tokens), position),
                committed + (level - 2) * top_k,
                mask,
                np.arange(len(tokens)),
                top_k,
            )
            tokens, parent_rows = builder.add_level(out["topk_logprobs"][0], out["topk_ids"][0])
            hidden = out["hidden_out"][0][parent_rows]
        return builder
