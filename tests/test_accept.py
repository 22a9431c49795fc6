import numpy as np
import pytest
from speculative_stats import Accept, chi_square, critical_value, flawed_rule

from eaglex.runtime.accept import RowArgmax, accept_greedy, accept_sampling
from eaglex.runtime.sampling import probabilities
from eaglex.runtime.tree import DraftTree, DraftTreeBuilder, chain_tree


def tree_from_parents(tokens: list[int], parents: list[int]) -> DraftTree:
    depths = [0]
    for p in parents[1:]:
        depths.append(depths[p] + 1)
    return DraftTree(np.array(tokens), np.array(parents), np.array(depths))


def assert_accepts(result: tuple[np.ndarray, int], path: list[int], bonus: int) -> None:
    assert result[0].dtype == np.int64
    assert result[0].tolist() == path
    assert result[1] == bonus


# --- greedy ------------------------------------------------------------------------------------------------


def test_greedy_chain():
    chain = chain_tree([5, 6, 7, 8])
    assert_accepts(accept_greedy(chain, np.array([6, 7, 8, 9])), [0, 1, 2, 3], 9)  # all accepted
    assert_accepts(accept_greedy(chain, np.array([6, 7, 3, 9])), [0, 1, 2], 3)  # partial
    assert_accepts(accept_greedy(chain, np.array([2, 7, 8, 9])), [0], 2)  # none: bonus = argmax at root
    assert_accepts(accept_greedy(chain_tree([5]), np.array([4])), [0], 4)


def test_greedy_takes_the_matching_sibling():
    # Root (node 0) has children 11, 12, 13; node 2 (12) has children 21, 22.
    tree = tree_from_parents([0, 11, 12, 13, 21, 22], [-1, 0, 0, 0, 2, 2])
    assert_accepts(accept_greedy(tree, np.array([12, 0, 22, 0, 0, 99])), [0, 2, 5], 99)
    assert_accepts(accept_greedy(tree, np.array([13, 0, 22, 7, 0, 99])), [0, 3], 7)
    assert_accepts(accept_greedy(tree, np.array([12, 0, 23, 0, 0, 99])), [0, 2], 23)


def random_tree(rng: np.random.Generator, size: int, vocab: int) -> DraftTree:
    """Random shape, parents before children, siblings with distinct tokens (as top-k drafts have)."""
    parents = [-1] + [int(rng.integers(0, n)) for n in range(1, size)]
    tokens = [int(rng.integers(vocab))]
    for n in range(1, size):
        used = {tokens[c] for c in range(1, n) if parents[c] == parents[n]}
        tokens.append(int(rng.choice([t for t in range(vocab) if t not in used])))
    return tree_from_parents(tokens, parents)


def test_greedy_deep_path():
    rng = np.random.default_rng(0)
    tree = random_tree(rng, 60, vocab=64)
    leaf = int(np.argmax(tree.depths))
    path = [leaf]
    while path[-1]:
        path.append(int(tree.parents[path[-1]]))
    path.reverse()
    assert len(path) > 5
    argmax = rng.integers(64, 128, size=60)  # tokens no node has: the walk only follows the chosen path
    argmax[path[:-1]] = tree.tokens[path[1:]]
    assert_accepts(accept_greedy(tree, argmax), path, int(argmax[leaf]))


def test_row_argmax_reads_only_the_visited_rows_and_agrees_with_the_full_argmax():
    rng = np.random.default_rng(2)
    for _ in range(50):
        tree = random_tree(rng, 30, vocab=12)
        logits = rng.normal(size=(30, 12)).astype(np.float32)
        lazy = RowArgmax(logits)
        path, bonus = accept_greedy(tree, lazy)
        expected = accept_greedy(tree, logits.argmax(-1))
        assert path.tolist() == expected[0].tolist() and bonus == expected[1]
        assert set(lazy.known) == set(path.tolist())  # the path's rows, the last giving the bonus


def test_sampling_at_temperature_zero_is_greedy():
    rng = np.random.default_rng(1)
    for _ in range(50):
        tree = random_tree(rng, 30, vocab=12)
        logits = rng.normal(size=(30, 12)).astype(np.float32)
        expected = accept_greedy(tree, logits.argmax(-1))
        result = accept_sampling(tree, logits, 0.0, 0.9, rng)
        assert result[0].tolist() == expected[0].tolist() and result[1] == expected[1]


# --- sampling: the emitted tokens must follow the target exactly ------------------------------------------

VOCAB, START, TEMPERATURE, TOP_P = 8, 3, 0.8, 0.9
RUNS = 15_000

# A synthetic target whose next-token distribution depends on the last token, and a drafter that
# approximates it (so that trees contain likely tokens and deep paths get accepted).
_table = np.random.default_rng(2024)
TARGET_LOGITS = _table.normal(scale=1.5, size=(VOCAB, VOCAB))
DRAFT_LOGITS = TARGET_LOGITS + _table.normal(scale=0.7, size=(VOCAB, VOCAB))
TARGET = probabilities(TARGET_LOGITS, TEMPERATURE, TOP_P)


def draft_tree(root: int) -> DraftTree:
    """A deterministic EAGLE-style tree: top_k 2, 3 candidates per row, 3 levels, 8 nodes."""
    builder = DraftTreeBuilder(root, top_k=2)
    rows = np.array([root])
    for _ in range(3):
        logits = DRAFT_LOGITS[rows]
        logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ids = np.argsort(-logprobs, axis=-1, kind="stable")[:, :3]
        rows, _ = builder.add_level(np.take_along_axis(logprobs, ids, -1), ids)
    return builder.build(8)


TREES = [draft_tree(root) for root in range(VOCAB)]


def first_two_tokens(accept: Accept, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode from START until two tokens are emitted, RUNS times; each round's root is the last token.

    Returns the counts of the first two emitted tokens [VOCAB, VOCAB] and how many nodes the first round
    accepted beyond the root, per run.
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((VOCAB, VOCAB), dtype=np.int64)
    first_round = np.zeros(RUNS, dtype=np.int64)
    for run in range(RUNS):
        emitted: list[int] = []
        while len(emitted) < 2:
            tree = TREES[emitted[-1] if emitted else START]
            path, bonus = accept(tree, TARGET_LOGITS[tree.tokens], TEMPERATURE, TOP_P, rng)
            if not emitted:
                first_round[run] = len(path) - 1
            emitted += [*tree.tokens[path[1:]].tolist(), bonus]
        counts[emitted[0], emitted[1]] += 1
    return counts, first_round


EXACT = TARGET[START][:, None] * TARGET  # P(first = a, second = b) = p(a | START) * p(b | a)


def test_sampling_emits_the_target_distribution():
    counts, first_round = first_two_tokens(accept_sampling, seed=7)
    # The trees exercise what matters: rejected siblings, and paths accepted two and three deep.
    assert [np.mean(first_round == n) > 0.05 for n in range(4)] == [True] * 4
    stat, df = chi_square(counts, EXACT)
    assert df >= 20
    assert stat < critical_value(df), (stat, df, critical_value(df))


@pytest.mark.parametrize(
    "flawed",
    [
        flawed_rule(renormalise=False),  # tries a sibling with p(c) instead of the residual's r(c)
        flawed_rule(bonus_from_residual=False),  # may re-emit a rejected sibling as the bonus
        flawed_rule(q=0.95),  # min(1, r(c) / q) with q != 1: accepts a little too eagerly
    ],
    ids=["no-renormalisation", "bonus-from-p", "q=0.95"],
)
def test_the_statistical_test_has_power(flawed):
    counts, _ = first_two_tokens(flawed, seed=7)
    stat, df = chi_square(counts, EXACT)
    assert stat > critical_value(df), (stat, df, critical_value(df))
