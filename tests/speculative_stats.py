"""Chi-square machinery shared by the statistical tests of speculative sampling (numpy only, no scipy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eaglex.runtime.sampling import probabilities, sample
from eaglex.runtime.tree import DraftTree

# accept_sampling's signature: (tree, logits [T, V], temperature, top_p, rng, top_k) -> (path, bonus)
Accept = Callable[[DraftTree, np.ndarray, float, float, np.random.Generator, int], tuple[np.ndarray, int]]


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expecting < 5 are pooled into one."""
    counts, expected = counts.ravel(), probs.ravel() * counts.sum()
    assert counts[expected == 0].sum() == 0, "a token the target cannot emit was emitted"
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    stat = float(np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep]))
    return stat, int(keep.sum()) - 1


def critical_value(df: int, z: float = 3.719016485455709) -> float:
    """Upper chi-square quantile by Wilson-Hilferty; z = the normal quantile for p = 1e-4 (no scipy)."""
    c = 2 / (9 * df)
    return df * (1 - c + z * np.sqrt(c)) ** 3


def flawed_rule(renormalise: bool = True, q: float = 1.0, bonus_from_residual: bool = True) -> Accept:
    """accept_sampling's rule with one deliberate flaw, to show that the statistical test catches it."""

    def accept(tree, logits, temperature, top_p, rng, top_k=0):
        node, path = 0, [0]
        while True:
            p = probabilities(logits[node], temperature, top_p, top_k)
            residual = p.copy()
            for child in tree.children(node):
                token = tree.tokens[child]
                r = residual[token] / residual.sum() if renormalise else p[token]
                if rng.random() < r / q:
                    node = int(child)
                    path.append(node)
                    break
                residual[token] = 0.0
            else:
                return np.array(path), sample(residual if bonus_from_residual else p, rng)

    return accept
