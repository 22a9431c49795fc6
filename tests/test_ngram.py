"""Prompt lookup (runtime/ngram.py): context-copied drafts grafted into the tree, output unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from test_generate import artifact, engine, prompts, run  # noqa: F401  (module fixtures)

from eaglex.errors import EaglexError
from eaglex.runtime.ngram import graft, lookup
from eaglex.runtime.tree import DraftTree, chain_tree


def test_lookup_prefers_the_longest_then_the_latest_match():
    context = np.array([7, 1, 2, 3, 9, 9, 4, 2, 3, 5, 6, 1, 2, 3])
    # [1, 2, 3] occurred once before (followed by 9 9 4); [2, 3] more recently (followed by 5 6).
    np.testing.assert_array_equal(lookup(context, 3), [9, 9, 4])
    np.testing.assert_array_equal(lookup(context, 2, max_ngram=2), [5, 6])
    np.testing.assert_array_equal(lookup(context, 10, max_ngram=2), [5, 6, 1, 2, 3])  # up to the end
    assert len(lookup(np.array([1, 2, 3, 4]), 5)) == 0  # no repeat
    assert len(lookup(np.array([3]), 5)) == 0


def test_graft_reuses_matching_nodes_and_keeps_the_invariants():
    # root 0 -> 1 (tokens 5), 2 (token 6); 1 -> 3 (token 7)
    tree = DraftTree(np.array([0, 5, 6, 7]), np.array([-1, 0, 0, 1]), np.array([0, 1, 1, 2]))
    grown = graft(tree, np.array([5, 7, 8, 9]))
    np.testing.assert_array_equal(grown.tokens, [0, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(grown.parents, [-1, 0, 0, 1, 3, 4])
    np.testing.assert_array_equal(grown.depths, [0, 1, 1, 2, 3, 4])
    assert graft(tree, np.array([6])) is tree and graft(tree, np.zeros(0, np.int64)) is tree
    branch = graft(tree, np.array([4, 5]))  # diverges at the root: a new branch, no duplicate sibling
    np.testing.assert_array_equal(branch.parents[4:], [0, 4])
    for node in range(len(branch)):
        kids = branch.children(node)
        assert len(set(branch.tokens[kids].tolist())) == len(kids)
    mask = graft(chain_tree([1]), np.array([2, 3])).attention_mask()
    np.testing.assert_array_equal(mask, np.tri(3, dtype=bool))


def repetitive(count: int) -> list[list[int]]:
    """Prompts that repeat a phrase: a continuation that repeats it again is found by lookup."""
    phrases = prompts(count, seed=5)
    return [[*phrase, 40, 41] * 3 + phrase[:1] for phrase in phrases]


@pytest.mark.parametrize("speculative", [False, True])
def test_prompt_lookup_keeps_greedy_output(engine, speculative):  # noqa: F811
    grafted = 0
    for prompt in repetitive(4) + prompts(2, seed=6):
        plain, _ = run(engine, prompt, speculative=False)
        tree = {"top_k": 4, "depth": 3, "total_tokens": 12} if speculative else {}
        looked_up, stats = run(engine, prompt, speculative=speculative, ngram=6, **tree)
        assert looked_up == plain
        grafted += stats.verified_tokens - stats.target_passes  # tokens accepted beyond the bonus
    assert grafted > 0, "repetitive prompts should get drafts accepted"


def test_ngram_must_fit_the_tree_limit(engine):  # noqa: F811
    with pytest.raises(EaglexError, match="--ngram must be between 0 and 127"):
        run(engine, [5, 6], speculative=False, ngram=128)
