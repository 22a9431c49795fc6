"""The draft vocabulary: the most frequent response tokens, as official `d2t` offsets and a `t2d` mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DraftVocab:
    d2t: torch.Tensor  # int64 [draft_vocab]: target_id = draft_id + d2t[draft_id]
    t2d: torch.Tensor  # bool [vocab]: True where the target token has a draft id
    coverage: float  # share of the counted tokens that the draft vocabulary contains

    @property
    def target_ids(self) -> torch.Tensor:
        """Target id of each draft id, ascending."""
        return torch.arange(len(self.d2t)) + self.d2t


def build_draft_vocab(tokens: np.ndarray, vocab_size: int, draft_vocab_size: int) -> DraftVocab:
    """The `draft_vocab_size` most frequent of `tokens` (the training responses), sorted by target id.

    Ties, including tokens never seen, go to the lower id, so the result depends only on the counts.
    """
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"draft vocabulary size {draft_vocab_size} must be in 1..{vocab_size}")
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size)
    return fixed_draft_vocab(np.argsort(-counts, kind="stable")[:draft_vocab_size], tokens, vocab_size)


def fixed_draft_vocab(target_ids: np.ndarray, tokens: np.ndarray, vocab_size: int) -> DraftVocab:
    """The draft vocabulary of the given target ids (for example an earlier drafter's), its coverage
    measured on `tokens`."""
    chosen = np.sort(np.asarray(target_ids, dtype=np.int64))
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size)
    t2d = np.zeros(vocab_size, dtype=bool)
    t2d[chosen] = True
    coverage = float(counts[chosen].sum() / max(counts.sum(), 1))
    d2t = torch.from_numpy(chosen - np.arange(len(chosen)))
    return DraftVocab(d2t=d2t, t2d=torch.from_numpy(t2d), coverage=coverage)
