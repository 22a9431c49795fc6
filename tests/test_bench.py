"""`eaglex bench` and `eaglex tune` on a tiny model, so the commands cannot rot (timings are not checked)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from test_cli import assert_user_error, eaglex

from eaglex.bench import tree_walk
from eaglex.bench.datasets import Prompt
from eaglex.bench.round_costs import mean_context
from eaglex.bench.tune import acceptance, greedy_trace
from eaglex.runtime.accept import accepted_drafts
from eaglex.runtime.engine import Engine
from eaglex.runtime.manifest import FileEntry
from eaglex.runtime.native_build import built_library
from eaglex.runtime.tree import DraftTree


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "artifact"
    result = eaglex(
        "export", "--model", tiny_model("llama"), "--drafter", "random", "--out", out, "--max-context", "512"
    )
    assert result.returncode == 0, result.stderr
    return out


def test_bench_writes_json_table_and_plot(artifact, tmp_path):
    result = eaglex(
        "bench",
        artifact,
        "--sets",
        "mt-bench,gsm8k",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--compare",
        "--peers",
        "transformers",  # genai's and llama.cpp's builds take minutes: tests/test_peers.py covers them
        "--ngram",
        "4",  # EAGLE-3 with prompt lookup joins as a method of its own
        "--also",
        artifact,  # a second artifact joins the run under its precision's name
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "results.json").read_text())
    assert set(record["results"]) == {"mt-bench", "gsm8k"}
    for per_method in record["results"].values():
        assert {"eaglex plain", "eaglex EAGLE-3", "transformers", "transformers prompt lookup"} <= set(
            per_method
        )
        # Greedy EAGLE-3 and transformers reproduce eaglex plain decoding token for token.
        assert per_method["eaglex EAGLE-3"]["same_output_as_reference"] == 2
        assert per_method["eaglex EAGLE-3 + lookup"]["same_output_as_reference"] == 2
        assert per_method["transformers"]["same_output_as_reference"] == 2
        assert per_method["eaglex EAGLE-3 fp32"]["same_output_as_reference"] == 2
        assert all(s["tokens_per_second"] > 0 for s in per_method.values())
    assert "| mt-bench | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_tune_writes_the_best_tree_into_the_manifest(artifact, tmp_path):
    tuned = tmp_path / "tuned"
    shutil.copytree(artifact, tuned)
    process = eaglex(
        "tune", tuned, "--prompts-per-set", "1", "--new-tokens", "8", "--reps", "1", "--check", "2",
        "--batch-sizes", "1,4", "--rows-per-pass", "16",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    result = json.loads((tuned / "tune.json").read_text())
    fields = ("batch", "speculative", "top_k", "depth", "total_tokens")
    by_batch = [{f: choice[f] for f in fields} for choice in result["by_batch"]["choices"]]
    lookup = {"ngram": result["ngram"]} if result["ngram"] else {}  # omitted when 0
    cuts_kept = {k: v for k, v in result["best"].items() if v}  # the manifest omits cuts of 0 (off)
    assert json.loads((tuned / "manifest.json").read_text())["tree"] == {
        **cuts_kept,
        "speculative": result["speculative"],
        "max_total_tokens": 128,
        **lookup,
        "by_batch": by_batch,
    }
    # Per batch size: a tree whose b copies fit the 16 rows of a pass, or plain decoding (one node).
    assert [row["batch"] for row in by_batch] == [1, 4]
    for row in by_batch:
        assert row["batch"] * row["total_tokens"] <= 16 and (row["total_tokens"] > 1) == row["speculative"]
    assert "| 4 | " in process.stdout and "batch 4: timing packed target passes" in process.stderr
    assert Engine.load(tuned, threads=1).manifest.tree.by_batch[1].batch == 4
    # The checks decode on the loop eaglex run takes by default: libeaglex's where it is built.
    assert result["decoded_on"] == ("native" if built_library() is not None else "python")
    # The default is the fastest measured: plain decoding or a checked tree, each with or without lookup.
    plain, plain_lookup = result["plain_tokens_per_second"], result["plain_lookup_tokens_per_second"]
    rates = {(None, 0): plain, (None, 8): plain_lookup}
    for row in result["measured"]:
        tree = tuple(row[name] for name in result["best"])  # the shape and its cuts
        rates |= {(tree, 0): row["measured_tokens_per_second"], (tree, 8): row["lookup_tokens_per_second"]}
    chosen = tuple(result["best"].values()) if result["speculative"] else None
    assert rates[chosen, result["ngram"]] == max(rates.values())
    assert ("default: plain decoding" in process.stdout) != result["speculative"]
    tuned_engine = Engine.load(tuned, threads=1)
    assert tuned_engine.default_config().ngram == result["ngram"]
    # The tree's cuts hold wherever its shape does (also with --spec), not under a shape of the caller's.
    for config in (tuned_engine.default_config(), tuned_engine.default_config(speculative=True)):
        assert config.min_path_probability == result["best"]["min_path_probability"]
        assert config.min_grow_probability == result["best"]["min_grow_probability"]
    assert tuned_engine.default_config(top_k=1).min_path_probability == 0.0
    # Each checked shape's round is split into verify, draft and the rest, predicted and measured.
    names = {
        f"{kind}_{part}_seconds"
        for kind in ("predicted", "measured")
        for part in ("verify", "draft", "other")
    }
    for row in result["measured"]:
        assert set(row["round_seconds"]) == names
        assert (
            row["round_seconds"]["measured_verify_seconds"]
            > 0
            < row["round_seconds"]["measured_draft_seconds"]
        )
    assert "ms per round (predicted/measured): verify" in process.stdout
    assert eaglex("run", tuned, "--prompt", "w5 w6", "--max-new-tokens", "4").returncode == 0


def test_accepted_drafts_follows_the_longest_matching_path():
    tree = DraftTree(np.array([9, 1, 2, 3, 4]), np.array([-1, 0, 0, 2, 3]), np.array([0, 1, 1, 2, 3]))
    assert accepted_drafts(tree, [2, 3, 4, 7]) == 3
    assert accepted_drafts(tree, [2, 5]) == 1
    assert accepted_drafts(tree, [8]) == 0


def test_tune_times_costs_at_the_calibration_prompts_mean_cache_length():
    assert mean_context([100, 300], 64, 1000) == 232  # prompt 200 on average, then 32 new tokens
    assert mean_context([900, 1100], 64, 960) == 960  # capped where the largest tree still fits


def test_cached_traces_skip_the_target_and_score_the_same(artifact, tmp_path, monkeypatch):
    engine = Engine.load(artifact, threads=1)
    prompts = [Prompt("t", "0", "w5 w6 w7", chat=False), Prompt("t", "1", "w8 w9", chat=False)]

    def score(traces=None):
        return acceptance(engine, prompts, (1, 4), (2, 6), 8, lambda _: None, 3, traces=traces)

    fresh = score()
    assert score(tmp_path) == fresh
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*partial*"))
    stored = greedy_trace(engine, prompts[0], 8, tmp_path)

    target_calls = []
    run = engine.target.run
    monkeypatch.setattr(engine.target, "run", lambda *args: target_calls.append(args) or run(*args))
    assert score(tmp_path) == fresh
    again = greedy_trace(engine, prompts[0], 8, tmp_path)
    assert target_calls == []
    assert np.array_equal(again.sequence, stored.sequence) and np.array_equal(again.features, stored.features)
    assert again.prompt_len == stored.prompt_len == len(engine.encode("w5 w6 w7", False))
    # Another target graph (its checksum in the manifest) or another length is another trace.
    greedy_trace(engine, prompts[0], 6, tmp_path)
    files = {**engine.manifest.files, "target.onnx": FileEntry(bytes=0, sha256="0" * 64)}
    monkeypatch.setattr(engine, "manifest", dataclasses.replace(engine.manifest, files=files))
    greedy_trace(engine, prompts[0], 8, tmp_path)
    assert target_calls and len(list(tmp_path.glob("*.npz"))) == 4


@pytest.mark.parametrize("recorded", [None, False])
def test_run_decodes_plain_by_default_where_tune_found_it_faster(artifact, tmp_path, recorded):
    """A manifest whose tree says `speculative: false` makes plain decoding the default; --spec or a tree
    flag asks for the tree anyway; a manifest without the field (older eaglex) speculates."""
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tree"].pop("speculative", None)
    if recorded is not None:
        manifest["tree"]["speculative"] = recorded
    (copy / "manifest.json").write_text(json.dumps(manifest))
    default = recorded is not False
    assert Engine.load(copy, threads=1).default_config().speculative == default

    def mode(*flags):
        process = eaglex("run", copy, "--prompt", "w5 w6", "--max-new-tokens", "3", *flags)
        assert process.returncode == 0, process.stderr
        return re.search(r"\[(\S+) on \w+, (python|native) loop\]", process.stderr).group(1)

    assert mode() == ("EAGLE-3" if default else "plain")
    if recorded is False:
        assert mode("--spec") == mode("--depth", "2") == "EAGLE-3"
        assert mode("--no-spec") == "plain"
        assert_user_error(eaglex("run", copy, "--prompt", "w5", "--spec", "--no-spec"), "--spec", "--no-spec")


def test_a_method_with_its_own_reference_is_checked_against_it():
    """`bench --also`: an int4 artifact's EAGLE-3 must reproduce int4 plain decoding, not float32's."""
    from eaglex.bench.methods import Decode
    from eaglex.bench.suite import run_suite

    class Fixed:
        def __init__(self, name: str, tokens: list[int], reference: str | None = None):
            self.name, self.tokens, self.reference, self.setup = name, tokens, reference, ""

        def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
            return Decode(self.tokens, 1.0, len(self.tokens), 0)

    methods = [
        Fixed("eaglex plain", [5, 6, 7]),
        Fixed("eaglex plain int4", [5, 6, 8], "eaglex plain int4"),
        Fixed("eaglex EAGLE-3 int4", [5, 6, 8], "eaglex plain int4"),
        Fixed("eaglex EAGLE-3 int4 broken", [5, 6, 9], "eaglex plain int4"),
        Fixed("peer", [5, 6, 8]),
    ]
    prompts = {"mt-bench": [Prompt("mt-bench", "1", "hello")] * 2}
    results = run_suite(lambda text, chat: [1, 2], methods, prompts, 8, warmup=False)["mt-bench"]
    same = {name: summary["same_output_as_reference"] for name, summary in results.items()}
    assert same == {
        "eaglex plain": 2,
        "eaglex plain int4": 2,
        "eaglex EAGLE-3 int4": 2,
        "eaglex EAGLE-3 int4 broken": 0,
        "peer": 0,  # no reference of its own: compared with the first method
    }


def test_shapes_are_scored_by_walking_the_continuation():
    """Trees, accepted drafts, nodes and levels worked out by hand on test_tree's pool (level maxima 0.90,
    0.74, 0.33); a walk moves past each round's accepted drafts and bonus token."""
    from test_tree import hand_builder  # a pool whose scores are worked out by hand

    pool = hand_builder()
    # The same pool at positions 0..3. From 0 the continuation is 10 20 30 40: A, C accepted, so the walk
    # moves past them and the bonus token (30) to position 3, where 40 matches nothing: 2 rounds.
    sequence = np.array([100, 10, 20, 30, 40])
    pools = tree_walk.Pools()
    for position in range(4):
        pools.add(2, pool, sequence, position)
    assert tree_walk.walk(sequence, 0, pools.runs[2][0][2], (2, 3, 4, 0.02, 0.1)).tolist() == [
        2, 2 + 0, 4 + 4, 3 + 3,
    ]  # fmt: skip  # rounds, drafts accepted, nodes (A, C, D twice), levels
    means = tree_walk.walk_means(pools, [(2, 3, 4, 0.02, 0.1), (2, 3, 4, 0.02, 0.8), (2, 3, 4, 0.5, 0.1)])
    assert means[2, 3, 4, 0.02, 0.1].tolist() == [1, 4, 3]
    assert means[2, 3, 4, 0.02, 0.8].tolist() == [1, 4, 2]  # level 3 not grown: the same nodes, a call less
    assert means[2, 3, 4, 0.5, 0.1].tolist() == [1, 3, 3]  # D (0.33) cut: A, C
    keys = tree_walk.shape_keys((2,), (2, 4, 32), max_depth=3)
    assert (2, 2, 4, 0.0, 0.0) in keys and (2, 3, 32, 0.0, 0.0) in keys  # fixed shapes of every size
    assert (2, 3, 4, 0.02, 0.1) in keys and (2, 3, 32, 0.02, 0.1) not in keys  # cuts up to MAX_CAP nodes
    assert (2, 1, 2, 0.02, 0.1) in keys and (2, 1, 2, 0.02, 0.2) not in keys  # one level: nothing to stop
    assert (2, 4, 4, 0.0, 0.0) not in keys  # deeper than 3 drafted nodes reach
    verify, draft = {1: 1.0, 4: 1.3}, {(2, 1): 0.0, (2, 2): 0.1, (2, 3): 0.2}
    assert np.allclose(tree_walk.verify_and_grow_seconds(2.5, 1.5, 2, verify, draft), (1.15, 0.05))
