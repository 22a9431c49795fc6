"""Draft-tree shapes scored by walking greedy continuations round by round, as decoding would, for
`eaglex tune`: fixed shapes, and trees that shrink where the drafter is unsure.

With probability cuts (runtime/tree.py) a round verifies only the nodes whose drafted path is at least
`min_path_probability` likely and grows a level deeper only while the likeliest path is at least
`min_grow_probability` likely; the shape's numbers become caps. On a CPU, where each verified row adds to
the pass and each level is a drafter call, that keeps tau and cuts the cost: on MT-bench the tuned (2,2,4)
tree made 2.17 tokens a pass in 2 drafter calls a round, a cut tree with caps (2,7,8) 2.16 in 1.67 calls and
fewer rows, 1.07x faster (docs/BENCHMARKS.md, fifth sitting).

Every shape is scored from the same pools (bench/tune.py `acceptance` grows one per position and top_k): a
pool grown to full depth holds the tree of any shape and cut, and says how deep a growth with a cut would
have gone. A walk starts at the continuation's first position, accepts the longest prefix of the
continuation its tree holds, and moves past it and the bonus token, so each shape is scored at the positions
it would really reach: a mean over every position would count the easy positions inside accepted runs too,
which flatters deep trees and weak cuts (experiments/tree_policy_walk.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from eaglex.runtime.accept import accepted_drafts
from eaglex.runtime.ngram import graft, lookup
from eaglex.runtime.tree import DraftTreeBuilder

PATH_PROBABILITIES = (0.02, 0.05, 0.1, 0.2)
GROW_PROBABILITIES = (0.1, 0.2, 0.3, 0.5)
MAX_CAP = 16  # the largest tree cap scored with cuts: on a CPU the best trees verify fewer rows


@dataclass
class Pools:
    """Per top_k, per calibration prompt: its greedy sequence, the continuation's first position, and the
    pool grown at each position from there on."""

    runs: dict[int, list[tuple[np.ndarray, int, list[DraftTreeBuilder]]]] = field(default_factory=dict)

    def add(self, top_k: int, builder: DraftTreeBuilder, sequence: np.ndarray, position: int) -> None:
        """The pool at `position` (its root is sequence[position]); positions arrive in order."""
        runs = self.runs.setdefault(top_k, [])
        if not runs or runs[-1][0] is not sequence:
            runs.append((sequence, position, []))
        runs[-1][2].append(builder)


def shape_keys(top_ks: tuple[int, ...], sizes: tuple[int, ...], max_depth: int) -> list[tuple]:
    """(top_k, depth, total_tokens, min_path_probability, min_grow_probability) of every shape scored: each
    fixed shape (no cuts) no deeper than its nodes reach, and for caps up to MAX_CAP every pair of cuts, the
    depth cap as deep as the nodes reach (one level has no growth to cut: one grow value there)."""
    keys = [
        (k, d, t, 0.0, 0.0)
        for k, t in itertools.product(top_ks, sizes)
        for d in range(1, min(t - 1, max_depth) + 1)
    ]
    for k, t in itertools.product(top_ks, (t for t in sizes if t <= MAX_CAP)):
        depth = min(t - 1, max_depth)
        grows = GROW_PROBABILITIES if depth > 1 else GROW_PROBABILITIES[:1]
        keys += [(k, depth, t, p, g) for p, g in itertools.product(PATH_PROBABILITIES, grows)]
    return keys


def walk(
    sequence: np.ndarray, start: int, pools: list[DraftTreeBuilder], key: tuple, ngram: int = 0
) -> np.ndarray:
    """Decodes the continuation after `start` with one shape (a key of shape_keys), prompt lookup of up to
    `ngram` tokens grafted where asked; returns the sums (rounds, drafts accepted, nodes verified, levels
    grown)."""
    _, depth, total, path, grow = key
    sums, position = np.zeros(4), start
    while position - start < len(pools):
        pool = pools[position - start]
        levels = pool.depth_reached(grow, depth)
        tree = pool.build(total, max_depth=levels, min_path_probability=path)
        if ngram:
            tree = graft(tree, lookup(sequence[: position + 1], ngram))
        accepted = accepted_drafts(tree, sequence[position + 1 :])
        sums += (1, accepted, len(tree), levels)
        position += accepted + 1
    return sums


def walk_means(pools: Pools, keys: list[tuple]) -> dict[tuple, np.ndarray]:
    """Per key: drafts accepted, nodes verified and levels grown per round, over every prompt's walk."""
    means = {}
    for key in keys:
        sums = sum((walk(seq, start, grown, key) for seq, start, grown in pools.runs[key[0]]), np.zeros(4))
        means[key] = sums[1:] / max(sums[0], 1)
    return means


def verify_and_grow_seconds(
    nodes: float, levels: float, top_k: int, verify: dict[int, float], draft: dict
) -> tuple[float, float]:
    """A round's predicted verify pass and tree growth at a mean number of nodes and levels: both costs
    grow about linearly, so the measured points are interpolated."""
    sizes = sorted(verify)
    depths = sorted(d for k, d in draft if k == top_k)
    grow = np.interp(levels, depths, [draft[top_k, d] for d in depths])
    return float(np.interp(nodes, sizes, [verify[s] for s in sizes])), float(grow)
