"""Trees per batch size: tune's pick from measured costs (synthetic numbers here), the manifest's
`tree.by_batch` table, and the scheduler following it (plain decoding at large batches, a tree below)
while every greedy sequence stays equal to plain greedy decoding alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_batch import alone, concurrently, engine, prompts
from test_cli import assert_user_error, eaglex

from eaglex.bench.tune_batch import BatchCosts, pick
from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract
from eaglex.runtime.batch import PackedStep
from eaglex.runtime.batch_trees import describe, follow, tuned_tree
from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.manifest import BatchTree
from eaglex.runtime.scheduler import BatchEngine

__all__ = ["engine"]  # test_batch's tiny artifact with a random drafter, as a fixture here too


def synthetic_costs(batches, pass_seconds) -> BatchCosts:
    """A packed pass costs pass_seconds(rows); growing costs 1 ms per level, committing 1 ms, any batch."""
    verify = {(b, t): pass_seconds(b * t) for b in batches for t in (1, 2, 4, 8, 16)}
    grow = {(b, k, d): 0.001 * (d - 1) for b in batches for k in (1, 2) for d in (1, 2, 3)}
    commit = {(b, k): 0.001 for b in batches for k in (1, 2)}
    return BatchCosts(verify, grow, commit)


def test_pick_takes_trees_at_small_batches_and_plain_decoding_where_rows_cost_too_much():
    # Rows are nearly free up to 8 per pass, then each costs as much as the pass itself: a GPU-like curve
    # for small batches, a compute-bound one beyond.
    costs = synthetic_costs((1, 2, 8), lambda rows: 0.010 + 0.010 * max(0, rows - 8))
    accepted = {(1, 1, 2): 0.8, (2, 2, 4): 1.5, (2, 3, 8): 2.0, (2, 3, 16): 2.2, (1, 3, 4): 1.2}
    one, two, eight = pick(accepted, costs, (1, 2, 8), rows_per_pass=64)
    # Batch 1: 8 rows are free, so the 8-node tree: 3.0 tokens / 13 ms beats plain 1 / 11 ms.
    assert (one.speculative, one.top_k, one.depth, one.total_tokens) == (True, 2, 3, 8)
    assert one.tokens_per_second == pytest.approx(3.0 / 0.013)
    assert one.plain_tokens_per_second == pytest.approx(1 / 0.011)
    # Batch 2: 16 rows cost 90 ms; two 4-node trees (8 rows) give 2 * 2.5 tokens in 12 ms.
    assert (two.speculative, two.total_tokens) == (True, 4)
    # Batch 8: even 2-node trees (16 rows) lose to 8 plain rows; the entry is plain, one node.
    assert (eight.speculative, eight.top_k, eight.depth, eight.total_tokens) == (False, 1, 1, 1)
    assert eight.tokens_per_second == eight.plain_tokens_per_second == pytest.approx(8 / 0.011)
    # The pass's row budget rules trees out: at 4 rows per pass batch 2 keeps 2-node trees at most.
    (capped,) = pick(accepted, costs, (2,), rows_per_pass=4)
    assert capped.total_tokens == 2 and capped.speculative
    # A tree larger than its pool is not scored: top_k 1 at depth 1 grows 2 nodes, not 4.
    assert pick({(1, 1, 4): 3.0}, costs, (1,), 64)[0].speculative is False


def test_tune_refuses_batch_sizes_that_are_not_increasing_or_do_not_fit(engine, tmp_path):
    for bad in ("4,2", "0,1", "1,x"):
        assert_user_error(eaglex("tune", tmp_path, "--batch-sizes", bad), "--batch-sizes", "increasing")
    # 2 sequences next to 2 x 127 rows exceed the 256-token context: refused before calibration starts.
    copy = shutil.copytree(engine.manifest.root, tmp_path / "copy")
    process = eaglex("tune", copy, "--batch-sizes", "1,2", "--rows-per-pass", "127")
    assert_user_error(process, "holds no 2 sequences", "--rows-per-pass")
    assert "calibration" not in process.stderr and not (copy / "tune.json").exists()


def test_tuned_tree_is_the_entry_at_or_below_the_batch_size():
    trees = (
        BatchTree(batch=2, speculative=True, top_k=2, depth=3, total_tokens=8),
        BatchTree(batch=4, speculative=False, top_k=1, depth=1, total_tokens=1),
    )
    assert tuned_tree(trees, 1) is trees[0]  # below the table: its smallest batch size
    assert tuned_tree(trees, 3) is trees[0] and tuned_tree(trees, 4) is tuned_tree(trees, 9) is trees[1]
    assert tuned_tree((), 3) is None
    assert describe(trees, 8) == "trees by batch size (top_k, depth, total_tokens): 2: k2 d3 t4, 4: plain"


def test_following_a_tuned_tree_keeps_prompt_lookup_only_where_it_speculates_and_drops_cuts():
    tree, plain = (
        BatchTree(batch=1, speculative=True, top_k=2, depth=3, total_tokens=4),
        BatchTree(batch=8, speculative=False, top_k=1, depth=1, total_tokens=1),
    )
    config = GenerationConfig(top_k=4, depth=1, total_tokens=2, ngram=8, min_path_probability=0.1)
    # The default tree's cuts go with its shape: the batch trees were tuned without them.
    assert follow(config, tree) == GenerationConfig(top_k=2, depth=3, total_tokens=4, ngram=8)
    assert follow(config, plain) == GenerationConfig(top_k=1, depth=1, total_tokens=1, speculative=False)


def test_the_manifest_stores_and_checks_the_table(engine, tmp_path):
    copy = Path(shutil.copytree(engine.manifest.root, tmp_path / "copy"))
    manifest = contract.load(copy)
    assert manifest.tree.by_batch == ()  # older manifests hold no table and still load
    assert "by_batch" not in json.loads((copy / "manifest.json").read_text())["tree"]
    table = (
        BatchTree(batch=1, speculative=True, top_k=2, depth=3, total_tokens=8),
        BatchTree(batch=8, speculative=False, top_k=1, depth=1, total_tokens=1),
    )
    contract.save(dataclasses.replace(manifest, tree=dataclasses.replace(manifest.tree, by_batch=table)))
    assert contract.load(copy).tree.by_batch == table
    data = json.loads((copy / "manifest.json").read_text())
    assert data["tree"]["by_batch"][1] == {
        "batch": 8, "speculative": False, "top_k": 1, "depth": 1, "total_tokens": 1
    }  # fmt: skip
    one, eight = data["tree"]["by_batch"]
    broken = {
        r"field tree\.by_batch must list increasing": [eight, one],
        r"tree\.by_batch\[batch 1\]\.top_k exceeds drafter": [{**one, "top_k": 1000}],
        r"tree\.by_batch\[batch 1\]\.depth exceeds": [{**one, "depth": 8}],
        r"tree\.by_batch\[0\]\.batch must be between": [{**one, "batch": 0}],
        r"tree\.by_batch\[0\]\.speculative is missing": [
            {"batch": 2, "top_k": 1, "depth": 1, "total_tokens": 1}
        ],
    }
    for message, rows in broken.items():
        with pytest.raises(EaglexError, match=message):
            contract.from_json({**data, "tree": {**data["tree"], "by_batch": rows}}, copy)


def test_the_scheduler_decodes_plain_from_the_tabulated_batch_size_and_stays_lossless(engine, monkeypatch):
    """With plain decoding tabulated from batch 3, passes of 3 or more decoding sequences verify one node
    per request that names no tree (a request with its own tree keeps it), smaller ones the batch-1 tree;
    every greedy output equals plain greedy decoding alone."""
    table = (
        BatchTree(batch=1, speculative=True, top_k=2, depth=3, total_tokens=6),
        BatchTree(batch=3, speculative=False, top_k=1, depth=1, total_tokens=1),
    )
    tree = dataclasses.replace(engine.manifest.tree, by_batch=table)
    monkeypatch.setattr(engine, "manifest", dataclasses.replace(engine.manifest, tree=tree))
    seen: list[tuple[int, list[tuple[bool, int]]]] = []
    grow = PackedStep.grow

    def spy(step, seqs, sizes, top, room) -> None:
        seen.append((len(seqs), [(s.config.adaptive_tree, n) for s, n in zip(seqs, sizes, strict=True)]))
        grow(step, seqs, sizes, top, room)

    monkeypatch.setattr(PackedStep, "grow", spy)
    own_tree = {"top_k": 2, "depth": 2, "total_tokens": 4}
    lengths = [40, 30, 24, 12, 6]
    items = [
        (p, engine.default_config(max_new_tokens=n, **(own_tree if i == 1 else {})))
        for i, (p, n) in enumerate(zip(prompts(5, seed=3, longest=12), lengths, strict=True))
    ]
    plain = [engine.default_config(max_new_tokens=n, speculative=False) for n in lengths]
    expected = [alone(engine, p, config) for (p, _), config in zip(items, plain, strict=True)]
    batch = BatchEngine(engine, max_batch=4, prefill_chunk=64, rows_per_pass=16)
    try:
        assert "1: k2 d3 t6, 3: plain" in describe(batch.trees, batch.rows_per_pass)
        assert concurrently(batch, items) == expected
        last = [nodes for _, nodes in seen[-1][1]]  # /metrics shows the last pass's mean tree size
        assert batch.metrics.tree_nodes == sum(last) / len(last)
    finally:
        batch.close()
    for batch_size, rows in seen:
        for adaptive, nodes in rows:
            share = 16 // batch_size
            assert nodes == (min(6, share) if batch_size < 3 else 1) if adaptive else min(4, share)
    # Both regimes ran, and the request with its own tree kept it among three or more.
    assert {b >= 3 for b, _ in seen if b} == {True, False}
    assert any(n > 1 for b, rows in seen if b >= 3 for adaptive, n in rows if not adaptive)
