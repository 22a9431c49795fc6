"""Trees that shrink where the drafter is unsure, scored for `eaglex tune`.

A fixed shape verifies `total_tokens` nodes and calls the drafter `depth` times every round, whether the
drafter is sure of its continuation or guessing. With probability cuts (runtime/tree.py) a round verifies
only the nodes whose drafted path is at least `min_path_probability` likely and grows a level deeper only
while the likeliest path is at least `min_grow_probability` likely; the shape's numbers become caps. On a
CPU, where each verified row adds to the pass and each level is a drafter call, that keeps tau and cuts
the cost: on MT-bench the tuned (2,2,4) tree made 2.17 tokens a pass in 2 drafter calls a round, a cut
tree with caps (2,7,8) 2.16 in 1.67 calls and fewer rows, 1.07x faster (docs/BENCHMARKS.md, fifth sitting).

The cuts are scored from the same pools as the fixed shapes (bench/tune.py `acceptance`): a pool grown to
full depth holds the tree of any cut, and says how deep a growth with that cut would have gone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from eaglex.runtime.accept import accepted_drafts
from eaglex.runtime.tree import DraftTreeBuilder

PATH_PROBABILITIES = (0.02, 0.05, 0.1, 0.2)
GROW_PROBABILITIES = (0.1, 0.2, 0.3, 0.5)
MAX_CAP = 16  # the largest tree cap scored with cuts: on a CPU the best trees verify fewer rows


@dataclass
class CutTally:
    """Sums over positions, per (top_k, depth cap, size cap, min_path_probability, min_grow_probability):
    drafts accepted, nodes verified and levels grown (drafter calls)."""

    sizes: tuple[int, ...]
    max_depth: int
    sums: dict[tuple, np.ndarray] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)  # per top_k

    def add(self, top_k: int, builder: DraftTreeBuilder, continuation: np.ndarray) -> None:
        """Scores every cut on one position's pool (grown to max_depth with this top_k)."""
        self.positions[top_k] = self.positions.get(top_k, 0) + 1
        for grow in GROW_PROBABILITIES:
            reached = builder.depth_reached(grow, self.max_depth)
            for size, path in itertools.product(self.sizes, PATH_PROBABILITIES):
                if size > MAX_CAP:
                    continue
                depth = min(size - 1, self.max_depth)  # the cap: a tree of `size` nodes is no deeper
                if depth == 1 and grow != GROW_PROBABILITIES[0]:
                    continue  # one level is all the first drafter call gives: no growth to cut
                levels = min(reached, depth)
                tree = builder.build(size, max_depth=levels, min_path_probability=path)
                key = (top_k, depth, size, path, grow)
                counts = np.array([accepted_drafts(tree, continuation), len(tree), levels], np.float64)
                self.sums[key] = self.sums.get(key, 0) + counts

    def means(self) -> dict[tuple, np.ndarray]:
        """Per key: mean drafts accepted, nodes verified and levels grown per round."""
        return {key: total / self.positions[key[0]] for key, total in self.sums.items()}


def verify_and_grow_seconds(
    nodes: float, levels: float, top_k: int, verify: dict[int, float], draft: dict
) -> tuple[float, float]:
    """A round's predicted verify pass and tree growth at a mean number of nodes and levels: both costs
    grow about linearly, so the measured points are interpolated."""
    sizes = sorted(verify)
    depths = sorted(d for k, d in draft if k == top_k)
    grow = np.interp(levels, depths, [draft[top_k, d] for d in depths])
    return float(np.interp(nodes, sizes, [verify[s] for s in sizes])), float(grow)
