"""Verification: which draft-tree nodes the target accepts, and the bonus token it emits after them, from
one target pass over the whole tree (EAGLE-2/3). Both rules emit exactly what plain decoding with the
target would: the proofs are in the docstrings."""

import numpy as np

from .sampling import probabilities, sample
from .tree import DraftTree


class RowArgmax:
    """The target's greedy token after node i, `logits[i].argmax()`, computed when first read.

    Greedy verification reads only the rows on the accepted path and the one after it (typically 2-4 of a
    24-node tree), and an argmax over a 49k vocabulary costs microseconds per row: the rest are never
    computed."""

    def __init__(self, logits: np.ndarray):
        self.logits, self.known = logits, {}

    def __getitem__(self, node: int) -> int:
        if node not in self.known:
            self.known[node] = int(self.logits[node].argmax())
        return self.known[node]


def accept_greedy(tree: DraftTree, target_argmax: np.ndarray | RowArgmax) -> tuple[np.ndarray, int]:
    """Follow the target's greedy choices down the tree.

    target_argmax[i] is the target's greedy next token after node i (only the nodes visited are read).
    From the root, move to the child whose token is the target's choice, until no child matches. Returns
    (accepted node indices in path order, starting with the root 0; bonus token = the target's choice
    after the last accepted node).
    """
    path = [0]
    while True:
        kids = tree.children(path[-1])
        match = kids[tree.tokens[kids] == target_argmax[path[-1]]]
        if not len(match):
            return np.array(path, dtype=np.int64), int(target_argmax[path[-1]])
        path.append(int(match[0]))


def accept_sampling(
    tree: DraftTree,
    logits: np.ndarray,
    temperature: float,
    top_p: float,
    rng: np.random.Generator,
    top_k: int = 0,
) -> tuple[np.ndarray, int]:
    """Speculative sampling over a deterministic draft tree; the emitted tokens follow the target exactly.

    logits [T, V]: the target's logits at every node. At the current node, with p the target distribution
    (`probabilities`, top_k included), try its children in tree order: accept child c with probability
    r(c), where r is p with the already-rejected siblings zeroed and renormalised; on acceptance move to c
    and repeat. When every child is rejected (or there is none), the bonus token is drawn from r.

    Why this is lossless: the tree does not depend on the target's randomness (the drafter proposes its
    top-k, q = 1), so P(emit c_1) = p(c_1), P(emit c_2) = (1 - p(c_1)) * p(c_2) / (1 - p(c_1)) = p(c_2), ...,
    and a token x that is no child is emitted with (1 - sum p(c_j)) * p(x) / (1 - sum p(c_j)) = p(x). Each
    step's token has exactly the distribution p of plain sampling, given the same prefix.

    Returns (accepted node indices in path order, starting with the root 0; bonus token). p is computed
    only for the visited nodes (V can be 50k and T 60).
    """
    path = [0]
    while True:
        residual = probabilities(logits[path[-1]], temperature, top_p, top_k)
        for child in tree.children(path[-1]):
            token = tree.tokens[child]
            # The mass is re-summed rather than updated by subtraction: when a single token is left its
            # acceptance probability is then exactly 1, so the residual never ends up all zero.
            if rng.random() * residual.sum() < residual[token]:
                path.append(int(child))
                break
            residual[token] = 0.0
        else:
            return np.array(path, dtype=np.int64), sample(residual, rng)


def accepted_drafts(tree: DraftTree, continuation: np.ndarray) -> int:
    """How many drafts greedy verification accepts when the target's greedy continuation is known: on the
    accepted path the node at depth d is followed by continuation[d] (off it the prediction is never read;
    past the continuation's end, -1 matches no token)."""
    predictions = np.append(continuation, -1)[np.minimum(tree.depths, len(continuation))]
    path, _ = accept_greedy(tree, predictions)
    return len(path) - 1
