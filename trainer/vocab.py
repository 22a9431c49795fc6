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


def carry_over_head(
    head: torch.Tensor, head_ids: torch.Tensor, new_ids: torch.Tensor, target_head: torch.Tensor
) -> torch.Tensor:
    """lm_head rows for the draft vocabulary `new_ids`, from a trained drafter's rows `head` (for the
    target ids `head_ids`, ascending) and the target's full lm_head.

    Tokens in both vocabularies keep their trained rows. Each new token starts from its target row mapped
    into the drafter's space by the affine least-squares fit of the trained rows on their target rows: the
    drafter imitates the target's distribution, so its rows are partly a linear image of the target's
    (R^2 0.37 on held-out rows of the SmolLM2 drafter), a start that already ranks new tokens sensibly.
    """

    def with_bias(ids: torch.Tensor) -> torch.Tensor:
        rows = target_head[ids].double()
        return torch.cat([rows, torch.ones(len(ids), 1, dtype=torch.float64)], dim=1)

    fit = torch.linalg.lstsq(with_bias(head_ids), head.double()).solution
    rows = with_bias(new_ids) @ fit
    position = torch.searchsorted(head_ids, new_ids).clamp(max=len(head_ids) - 1)
    kept = head_ids[position] == new_ids
    rows[kept] = head[position[kept]].double()
    return rows.to(head.dtype)
