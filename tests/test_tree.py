import numpy as np
import pytest

from eaglex.runtime.tree import DraftTree, DraftTreeBuilder, chain_tree

ROOT = 100


def hand_builder() -> DraftTreeBuilder:
    """top_k 2, three levels; every score below is worked out by hand in the comments."""
    b = DraftTreeBuilder(ROOT, top_k=2)
    # Pool 0: A=10 (-0.1), pool 1: B=11 (-2.5). Frontier [A, B].
    tokens, rows = b.add_level([[-0.1, -2.5]], [[10, 11]])
    np.testing.assert_array_equal(tokens, [10, 11])
    np.testing.assert_array_equal(rows, [0, 0])
    np.testing.assert_array_equal(b.scratch_mask(), np.eye(2, dtype=bool))
    # Pool 2: C=20 (-0.3), 3: D=21 (-1.1) under A; 4: 22 (-2.55), 5: 23 (-2.8) under B. Frontier [C, D].
    tokens, rows = b.add_level([[-0.2, -1.0], [-0.05, -0.3]], [[20, 21], [22, 23]])
    np.testing.assert_array_equal(tokens, [20, 21])
    np.testing.assert_array_equal(rows, [0, 0])
    # Scratch rows: A=0, B=1, C=2, D=3. C sees A and itself, D sees A and itself.
    np.testing.assert_array_equal(b.scratch_mask(), [[1, 0, 1, 0], [1, 0, 0, 1]])
    # Pool 6: 30 (-1.2), 7: 31 (-1.3) under C; 8: 32 (-1.11), 9: 33 (-3.1) under D.
    # Frontier best first: [32 (from row 1 = D), 30 (from row 0 = C)].
    tokens, rows = b.add_level([[-0.9, -1.0], [-0.01, -2.0]], [[30, 31], [32, 33]])
    np.testing.assert_array_equal(tokens, [32, 30])
    np.testing.assert_array_equal(rows, [1, 0])
    # Rows 4 (32) and 5 (30): 32 sees A, D and itself; 30 sees A, C and itself.
    np.testing.assert_array_equal(b.scratch_mask(), [[1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 1]])
    return b


def assert_tree(tree: DraftTree, tokens, parents, depths):
    np.testing.assert_array_equal(tree.tokens, tokens)
    np.testing.assert_array_equal(tree.parents, parents)
    np.testing.assert_array_equal(tree.depths, depths)
    for a in (tree.tokens, tree.parents, tree.depths):
        assert a.dtype == np.int64


def test_builder_reproduces_hand_computed_tree():
    b = hand_builder()
    # Best 5: A -0.1, C -0.3, D -1.1, 32 -1.11, 30 -1.2; in pool order A, C, D, 30, 32.
    assert_tree(b.build(6), [ROOT, 10, 20, 21, 30, 32], [-1, 0, 1, 1, 2, 3], [0, 1, 2, 2, 3, 3])
    # Best 7 adds 31 (-1.3) and B (-2.5): pool order A, B, C, D, 30, 31, 32.
    assert_tree(
        b.build(8), [ROOT, 10, 11, 20, 21, 30, 31, 32], [-1, 0, 0, 1, 1, 3, 3, 4], [0, 1, 1, 2, 2, 3, 3, 3]
    )


def test_build_sizes_at_the_edges():
    b = hand_builder()
    assert_tree(b.build(1), [ROOT], [-1], [0])
    whole = b.build(1000)
    assert_tree(whole, [ROOT, 10, 11, 20, 21, 22, 23, 30, 31, 32, 33], [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
                [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])  # fmt: skip
    assert_tree(DraftTreeBuilder(ROOT, 4).build(60), [ROOT], [-1], [0])
    with pytest.raises(ValueError):
        b.build(0)


def test_add_level_checks_shapes():
    b = DraftTreeBuilder(ROOT, top_k=3)
    with pytest.raises(ValueError):
        b.add_level([[-0.1, -0.2]], [[1, 2]])  # 2 candidates cannot fill a frontier of 3
    b.add_level([[-0.1, -0.2, -0.3]], [[1, 2, 3]])
    with pytest.raises(ValueError):
        b.add_level([[-0.1, -0.2, -0.3]], [[1, 2, 3]])  # the frontier has 3 rows


def test_ties_never_drop_a_parent():
    # Log-prob 0 children tie with their parents; a positive log-prob (rounding noise) would even beat them.
    b = DraftTreeBuilder(ROOT, top_k=2)
    b.add_level([[0.0, 0.0]], [[1, 2]])
    b.add_level([[0.0, 1e-7], [0.0, 0.0]], [[3, 4], [5, 6]])
    b.add_level([[0.0, 0.0], [0.0, 0.0]], [[7, 8], [9, 10]])
    for total in range(1, 12):
        tree = b.build(total)
        assert len(tree) == total
        for n in range(1, total):
            assert 0 <= tree.parents[n] < n
    assert_tree(b.build(4), [ROOT, 1, 2, 3], [-1, 0, 0, 1], [0, 1, 1, 2])


def ancestor_mask(tree: DraftTree) -> np.ndarray:
    mask = np.zeros((len(tree), len(tree)), dtype=bool)
    for i in range(len(tree)):
        node = i
        while node >= 0:
            mask[i, node] = True
            node = tree.parents[node]
    return mask


def test_attention_mask_and_children():
    tree = hand_builder().build(1000)
    np.testing.assert_array_equal(tree.attention_mask(), ancestor_mask(tree))
    children = [tree.children(n).tolist() for n in range(len(tree))]
    assert children == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]] + [[]] * 6
    chain = chain_tree([5, 6, 7])
    np.testing.assert_array_equal(chain.attention_mask(), np.tril(np.ones((3, 3), dtype=bool)))
    assert [chain.children(n).tolist() for n in range(3)] == [[1], [2], []]
    np.testing.assert_array_equal(chain_tree([5]).attention_mask(), [[True]])


def test_truncate_keeps_a_prefix():
    tree = hand_builder().build(8)
    assert_tree(tree.truncate(4), [ROOT, 10, 11, 20], [-1, 0, 0, 1], [0, 1, 1, 2])
    assert_tree(tree.truncate(100), tree.tokens, tree.parents, tree.depths)
    with pytest.raises(ValueError):
        tree.truncate(0)


def test_malformed_tree_is_refused():
    with pytest.raises(ValueError):
        DraftTree(tokens=np.array([1, 2, 3]), parents=np.array([-1, 2, 0]), depths=np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        DraftTree(tokens=np.array([1, 2]), parents=np.array([-1, 0]), depths=np.array([0, 2]))


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_satisfy_invariants(seed):
    """Against an independent model: every candidate is identified by its token path from the root."""
    rng = np.random.default_rng(seed)
    top_k, k = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    k = max(k, top_k)  # level 1 has a single row, whose k candidates must fill the frontier
    vocab = 3 * k
    b = DraftTreeBuilder(ROOT, top_k)
    candidates: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    rows_seen: list[set[int]] = [set()]  # scratch rows visible to each frontier node
    for level in range(int(rng.integers(1, 6))):
        logprobs = -rng.exponential(2.0, size=(len(frontier), k))
        ids = np.stack([rng.permutation(vocab)[:k] for _ in frontier])  # distinct siblings, as top-k gives
        pool = [
            ((*path, int(t)), score + lp)
            for (path, score), row_lp, row_ids in zip(frontier, logprobs, ids, strict=True)
            for lp, t in zip(row_lp, row_ids, strict=True)
        ]
        candidates.update(pool)
        tokens, parent_rows = b.add_level(logprobs, ids)
        new = [(*frontier[r][0], int(t)) for t, r in zip(tokens, parent_rows, strict=True)]
        best = sorted(pool, key=lambda c: -c[1])[:top_k]
        assert new == [path for path, _ in best]
        frontier = [(path, candidates[path]) for path in new]
        rows_seen = [rows_seen[r] | {level * top_k + j} for j, r in enumerate(parent_rows)]
        mask = b.scratch_mask()
        assert mask.shape == (top_k, (level + 1) * top_k)
        assert [set(np.flatnonzero(row).tolist()) for row in mask] == rows_seen

    # A path-probability cut is the same ranking cut where the scores fall below it.
    cut = float(np.exp(rng.choice(list(candidates.values()))))
    likely = sum(score >= np.log(cut) for score in candidates.values())
    for total in (2, likely + 1, len(candidates) + 1):
        np.testing.assert_array_equal(
            b.build(total, min_path_probability=cut).tokens, b.build(min(total, likely + 1)).tokens
        )
    for total in {1, 2, int(rng.integers(1, len(candidates) + 2)), len(candidates) + 1, len(candidates) + 5}:
        tree = b.build(total)
        assert len(tree) == min(total, len(candidates) + 1)
        assert tree.tokens[0] == ROOT and tree.parents[0] == -1 and tree.depths[0] == 0
        paths: list[tuple[int, ...]] = [()]
        for n in range(1, len(tree)):
            parent = tree.parents[n]
            assert 0 <= parent < n  # parents precede children, so the kept set is closed under ancestors
            assert tree.depths[n] == tree.depths[parent] + 1
            paths.append((*paths[parent], int(tree.tokens[n])))
        assert len(set(paths)) == len(paths)
        kept = sorted((candidates[p] for p in paths[1:]), reverse=True)
        np.testing.assert_allclose(kept, sorted(candidates.values(), reverse=True)[: len(tree) - 1])
        np.testing.assert_array_equal(tree.attention_mask(), ancestor_mask(tree))


def test_path_probability_cut_keeps_the_likely_nodes():
    b = hand_builder()  # scores: A -0.1, C -0.3, D -1.1, 32 -1.11, 30 -1.2, 31 -1.3, B -2.5, ...
    assert_tree(b.build(8, min_path_probability=np.exp(-1.15)), [ROOT, 10, 20, 21, 32], [-1, 0, 1, 1, 3],
                [0, 1, 2, 2, 3])  # fmt: skip
    assert_tree(b.build(3, min_path_probability=np.exp(-1.15)), [ROOT, 10, 20], [-1, 0, 1], [0, 1, 2])
    assert_tree(b.build(8, min_path_probability=0.99), [ROOT], [-1], [0])
    np.testing.assert_array_equal(b.build(8, min_path_probability=0.0).tokens, b.build(8).tokens)


def test_growth_stops_at_the_first_unlikely_level():
    b = hand_builder()  # level maxima: -0.1, -0.3, -1.11 (the frontier's best after level 3)
    assert [b.depth_reached(p, 3) for p in (0.0, np.exp(-0.2), np.exp(-1.0), 0.99)] == [3, 2, 3, 1]
    assert b.depth_reached(0.0, 2) == 2
    assert b.worth_growing(np.exp(-1.2)) and not b.worth_growing(np.exp(-1.0))
