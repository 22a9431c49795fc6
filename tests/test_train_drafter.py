"""`train-drafter` end to end on a tiny random model: the loss goes down, the result is an official-format
checkpoint that reloads and exports, training is deterministic and resumes exactly, the cached target
features are the runtime's, and evaluation prompts stay out."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from eaglex.bench.datasets import SOURCES
from eaglex.cli import main
from eaglex.errors import EaglexError
from eaglex.exporter.checkpoints import load_drafter, load_target, read_target_config
from eaglex.exporter.target import default_feature_layers
from eaglex.train import datapack, loop, pipeline
from eaglex.train.data import EvalFilter, Sample
from eaglex.train.features import FeatureStore, LiveFeatures, TargetFeatures, extract
from eaglex.train.loop import TrainConfig
from eaglex.train.pipeline import DataConfig, train_drafter

EVAL_PROMPT = "w30 w31 w32 w33 w34 w35 w36 w37 w38 w39 w40 w41 w42 w43"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds waiting, a lot of it on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_conversations(path: Path, count: int = 40, turns: int = 1) -> Path:
    """ShareGPT-format file of word-level conversations for the tiny tokenizer; one holds an eval prompt.
    With turns > 1, every other conversation has that many user turns (the later ones short)."""
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(3, 60)}" for _ in range(n))

    records = [
        {
            "id": str(i),
            "conversations": [{"from": "human", "value": words(6)}, {"from": "gpt", "value": words(24)}],
        }
        for i in range(count)
    ]
    records[5]["conversations"][0]["value"] = f"please {EVAL_PROMPT}"
    for record in records[::2] if turns > 1 else []:
        for _ in range(turns - 1):
            record["conversations"] += [
                {"from": "human", "value": words(2)},
                {"from": "gpt", "value": words(9)},
            ]
    path.write_text(json.dumps(records))
    return path


DATA = DataConfig(samples=0, regenerate=8, max_length=48, max_new_tokens=12, val_samples=6)
TRAIN = TrainConfig(draft_vocab_size=40, ttt_steps=3, epochs=3, batch_tokens=160, lr=3e-3, warmup_steps=3)


def run(
    model: Path,
    tmp_path: Path,
    name: str,
    data_seed: int = 0,
    work: str | None = None,
    data_overrides: dict | None = None,
    turns: int = 1,
    device: str = "cpu",
    live_features: bool = False,
    report=lambda _: None,
    **train_overrides,
) -> Path:
    data_file = write_conversations(tmp_path / "conversations.json", turns=turns)
    data = DataConfig(
        **{**DATA.__dict__, "sources": (str(data_file),), "seed": data_seed, **(data_overrides or {})}
    )
    train = TrainConfig(**{**TRAIN.__dict__, **train_overrides})
    return train_drafter(
        model,
        tmp_path / name,
        tmp_path / f"work-{work or name}",
        data,
        train,
        EvalFilter([EVAL_PROMPT]),
        report=report,
        device=device,
        live_features=live_features,
    )


@pytest.fixture(scope="module")
def trained(sharp_model, tmp_path_factory) -> Path:
    return run(sharp_model, tmp_path_factory.mktemp("train"), "drafter")


def log(out: Path, **train_overrides) -> list[dict]:
    run_name = TrainConfig(**{**TRAIN.__dict__, **train_overrides}).run_name()
    lines = (out.parent / f"work-{out.name}" / run_name / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_training_lowers_the_loss(trained):
    val = [record for record in log(trained) if "val_loss" in record]
    assert [record["epoch"] for record in val] == [0, 1, 2, 3]  # before training, then after each epoch
    # The soft teacher's entropy bounds the loss from below; the top-1 agreement shows the learning.
    assert val[-1]["val_loss"] < 0.8 * val[0]["val_loss"]
    assert val[0]["val_accuracy"][0] < 0.05 and val[-1]["val_accuracy"][0] > 0.25


def test_checkpoint_is_official_format_and_reloads(trained, sharp_model):
    config = json.loads((trained / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["draft_vocab_size"] == 40
    weights = safetensors.torch.load_file(trained / "model.safetensors")
    assert "embed_tokens.weight" not in weights
    assert weights["fc.weight"].dtype == torch.float16
    assert weights["midlayer.self_attn.q_proj.weight"].shape == (64, 128)  # [heads * d, 2H]
    assert weights["d2t"].dtype == torch.int64 and weights["t2d"].dtype == torch.bool
    # d2t holds offsets: draft id + offset = the target id that t2d marks.
    assert torch.equal((torch.arange(40) + weights["d2t"]), weights["t2d"].nonzero().flatten())
    drafter = load_drafter(trained, read_target_config(sharp_model))
    assert torch.allclose(drafter.fc.weight, weights["fc.weight"].float())
    record = json.loads((trained / "training.json").read_text())
    assert record["budget"]["optimizer_steps"] > 0 and record["budget"]["trained_tokens"] > 0
    assert record["train_sequences_by_features_dtype"] == {"float32": record["train_sequences"]}


def test_trained_drafter_exports_and_decodes_losslessly(trained, sharp_model, tmp_path):
    from eaglex.exporter.export import export_artifact
    from eaglex.runtime.engine import Engine

    artifact = export_artifact(
        sharp_model, tmp_path / "artifact", trained, max_context=128, progress=lambda _: None
    )
    engine = Engine.load(artifact)
    prompt = engine.encode("w5 w6 w7", chat=True)
    spec = [t for ids in engine.generate(prompt, engine.default_config(max_new_tokens=24)) for t in ids]
    plain_config = engine.default_config(max_new_tokens=24, speculative=False)
    plain = [t for ids in engine.generate(prompt, plain_config) for t in ids]
    assert spec == plain


def test_eval_prompts_are_excluded_and_answers_regenerated(trained):
    work = trained.parent / f"work-{trained.name}"
    regenerated = [json.loads(line) for line in (work / "regenerated.jsonl").read_text().splitlines()]
    assert len(regenerated) == 8
    store = FeatureStore(work / "features" / "train", 64)
    val = FeatureStore(work / "features" / "val", 64)
    assert len(store) + len(val) == 39  # 40 conversations, one with the eval prompt
    # The eval prompt's words may occur alone; the prompt itself may not.
    ids = store.column("ids").tolist()
    eval_ids = [int(w[1:]) for w in EVAL_PROMPT.split()]
    assert not any(ids[i : i + len(eval_ids)] == eval_ids for i in range(len(ids)))


def run_stopped_after_saves(monkeypatch, saves: int, *args, **kwargs) -> None:
    """run(*args, **kwargs), killed right after its `saves`-th checkpoint, as a session's end kills it."""
    count = {"saves": 0}
    original = loop.Trainer.save

    def save_then_die(self):
        original(self)
        count["saves"] += 1
        if count["saves"] == saves:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(loop.Trainer, "save", save_then_die)
        run(*args, **kwargs)


def test_resume_after_interruption_is_exact(trained, sharp_model, tmp_path, monkeypatch):
    """A run killed mid-epoch and rerun ends with the same weights as the uninterrupted run (same seed)."""
    # save_minutes 0: a checkpoint after every step
    run_stopped_after_saves(monkeypatch, 4, sharp_model, tmp_path, "drafter", save_minutes=0.0)
    resumed = run(sharp_model, tmp_path, "drafter", save_minutes=0.0)
    got = safetensors.torch.load_file(resumed / "model.safetensors")
    want = safetensors.torch.load_file(trained / "model.safetensors")
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_live_features_are_the_cached_ones_and_train_as_well(trained, sharp_model, tmp_path):
    """--live-features: each batch holds what the cached store gives for it (the target's own padding
    rounding aside), no train features reach the disk, and the run learns as the cached one did."""
    from transformers import AutoModelForCausalLM

    out = run(sharp_model, tmp_path, "live", live_features=True)
    work = tmp_path / "work-live"
    assert not (work / "features" / "train").exists() and (work / "features" / "val").is_dir()
    record = json.loads((out / "training.json").read_text())
    assert record["train_features"] == "live"
    cached = FeatureStore(trained.parent / f"work-{trained.name}" / "features" / "train", 64)
    samples = [Sample(list(map(int, ids)), list(map(bool, mask))) for ids, mask in stored_sequences(cached)]
    hf = AutoModelForCausalLM.from_pretrained(sharp_model, dtype=torch.float32)
    layers = default_feature_layers(read_target_config(sharp_model).num_layers)
    live = LiveFeatures(TargetFeatures(hf, layers), samples)
    assert live.lengths == cached.lengths and live.num_tokens == cached.num_tokens
    assert np.array_equal(live.column("ids"), cached.column("ids"))
    for indices in ([0, 3, 7], [len(samples) - 1]):
        got, want = live.batch(indices), cached.batch(indices)
        for name in ("ids", "loss_mask", "lengths", "argmax"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        for name in ("features", "final_hidden"):
            assert torch.allclose(getattr(got, name), getattr(want, name), rtol=2e-3, atol=2e-3), name
    fp32, live_losses = ([r["val_loss"] for r in log(o) if "val_loss" in r] for o in (trained, out))
    assert live_losses[-1] == pytest.approx(fp32[-1], rel=0.02)


def stored_sequences(store: FeatureStore) -> list[tuple[np.ndarray, np.ndarray]]:
    ids, mask = store.column("ids"), store.column("loss_mask")
    return [(ids[a:b], mask[a:b]) for a, b in itertools.pairwise(store.offsets)]


def test_a_packed_checkpoint_resumes_a_live_run_on_a_new_machine(sharp_model, tmp_path, monkeypatch):
    """A live-features run stopped part way, packed with its checkpoint (fp32 weights, AdamW moments in bf16)
    and unpacked into an empty work folder, goes on from that step with the packed answers and ends where
    the uninterrupted run did, to the moments' rounding."""
    settings = {"live_features": True, "save_minutes": 0.0}
    whole = run(sharp_model, tmp_path, "whole", **settings)
    run_stopped_after_saves(monkeypatch, 5, sharp_model, tmp_path, "moved", work="old-machine", **settings)
    packed = tmp_path / "pack"
    datapack.pack(tmp_path / "work-old-machine", packed, report=lambda _: None, checkpoints=True)
    run_name = TRAIN.run_name()
    state = torch.load(packed / run_name / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5
    assert {m["exp_avg_sq"].dtype for m in state["optimizer"]["state"].values()} == {torch.bfloat16}
    checkpoint = tmp_path / "work-old-machine" / run_name / "checkpoint"
    assert (packed / run_name / "checkpoint" / "model.safetensors").read_bytes() == (
        checkpoint / "model.safetensors"
    ).read_bytes()
    datapack.unpack(packed, tmp_path / "work-moved", report=lambda _: None)
    lines = []
    moved = run(sharp_model, tmp_path, "moved", report=lines.append, **settings)
    assert any(line.startswith("resumed at epoch 1, optimizer step 5/") for line in lines)
    assert not any(line.startswith("regenerate answers") for line in lines)  # the answers came packed
    budgets = [json.loads((o / "training.json").read_text())["budget"] for o in (whole, moved)]
    assert budgets[0]["optimizer_steps"] == budgets[1]["optimizer_steps"]
    assert budgets[0]["trained_tokens"] == budgets[1]["trained_tokens"]
    losses = [[r["val_loss"] for r in log(o) if "val_loss" in r][-1] for o in (whole, moved)]
    assert losses[1] == pytest.approx(losses[0], rel=0.01)
    weights = [safetensors.torch.load_file(o / "model.safetensors") for o in (whole, moved)]
    assert torch.allclose(weights[1]["fc.weight"], weights[0]["fc.weight"], atol=1e-2)


def test_phase_hours_count_a_run_stopped_part_way(tmp_path, monkeypatch):
    """hours.json (the budget in training.json) gains a phase's time at every progress line, so a process
    killed mid-phase, as at the end of a session, keeps the hours it spent; the rerun adds its own."""
    clock = iter([0.0, 1800.0, 3600.0, 0.0, 900.0, 0.0, 360.0])
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: next(clock))
    lines = []
    first = pipeline.PhaseHours(tmp_path, "data", lines.append)
    first("half an hour in")
    first("an hour in")  # then killed: no save() at the end
    assert json.loads((tmp_path / "hours.json").read_text()) == {"data": 1.0}
    rerun = pipeline.PhaseHours(tmp_path, "data", lines.append)
    assert rerun.save() == {"data": 1.25}
    assert pipeline.PhaseHours(tmp_path, "features", lines.append).save() == {"data": 1.25, "features": 0.1}
    assert lines == ["half an hour in", "an hour in"]


def test_init_from_continues_a_finished_run(trained, sharp_model, tmp_path):
    settings = {"init_from": str(trained), "epochs": 1, "lr": 1e-3}
    continued = run(sharp_model, tmp_path, "continued", **settings)
    before, after = (
        [r for r in records if "val_loss" in r] for records in (log(trained), log(continued, **settings))
    )
    # It starts where the finished run ended (saved in fp16: nearly the same loss), not from random weights.
    assert after[0]["val_loss"] == pytest.approx(before[-1]["val_loss"], rel=0.02)
    record = json.loads((continued / "training.json").read_text())
    assert record["init_from_training"] == json.loads((trained / "training.json").read_text())
    with pytest.raises(EaglexError, match="drafts 40 tokens, not --draft-vocab-size 30"):
        run(sharp_model, tmp_path, "other-size", init_from=str(trained), draft_vocab_size=30)


def test_init_from_keeps_the_draft_vocabulary_on_other_data(trained, sharp_model, tmp_path):
    """Continuing on other conversations keeps the starting drafter's tokens (its lm_head rows are theirs),
    where a fresh run on that data chooses other ones."""
    fresh = run(sharp_model, tmp_path, "fresh", data_seed=1, epochs=1)
    continued = run(sharp_model, tmp_path, "continued", data_seed=1, epochs=1, init_from=str(trained))
    d2t = {
        name: load_drafter(out, read_target_config(sharp_model)).d2t
        for name, out in (("trained", trained), ("fresh", fresh), ("continued", continued))
    }
    assert not torch.equal(d2t["fresh"], d2t["trained"])
    assert torch.equal(d2t["continued"], d2t["trained"])


def test_init_from_can_rechoose_the_draft_vocabulary(trained, sharp_model, tmp_path):
    """--rechoose-vocab: the vocabulary a fresh run on the new data would choose, at another size too, and a
    start far better than random (the trained rows and layers are carried over)."""
    fresh = run(sharp_model, tmp_path, "fresh", data_seed=1, epochs=1, draft_vocab_size=44)
    settings = {"data_seed": 1, "epochs": 1, "draft_vocab_size": 44, "init_from": str(trained)}
    continued = run(sharp_model, tmp_path, "continued", **settings, rechoose_vocab=True)
    config = read_target_config(sharp_model)
    assert torch.equal(load_drafter(continued, config).d2t, load_drafter(fresh, config).d2t)
    first_val_loss = {
        name: next(r["val_loss"] for r in log(out, epochs=1, draft_vocab_size=44, **extra) if "val_loss" in r)
        for name, out, extra in (
            ("fresh", fresh, {}),
            ("continued", continued, {"init_from": str(trained), "rechoose_vocab": True}),
        )
    }
    assert first_val_loss["continued"] < 0.8 * first_val_loss["fresh"]


def test_bf16_autocast_trains_about_as_well(trained, sharp_model, tmp_path):
    """--bf16: the same schedule with bfloat16 matrix products lowers the loss about as far; the numbers
    differ (autocast took effect); the run folder has the fp32 run's name, so a run may resume either way."""
    out = run(sharp_model, tmp_path, "bf16", bf16=True)
    assert TrainConfig(**{**TRAIN.__dict__, "bf16": True}).run_name() == TRAIN.run_name()
    fp32, bf16 = ([r["val_loss"] for r in log(o) if "val_loss" in r] for o in (trained, out))
    assert bf16[-1] < 0.8 * bf16[0]
    assert bf16[-1] != fp32[-1] and bf16[-1] == pytest.approx(fp32[-1], rel=0.05)


def test_runs_with_other_settings_share_the_work_folder(sharp_model, tmp_path):
    """A second schedule on the same data reuses the regenerated answers and the features, in its own
    run folder, and does not disturb the first run's checkpoint."""
    first = run(sharp_model, tmp_path, "first", work="shared", epochs=1)
    work = tmp_path / "work-shared"
    cached = {p: p.stat().st_mtime_ns for p in [work / "regenerated.jsonl", *work.glob("features/*/*")]}
    assert len(cached) == 1 + 2 * 6  # answers; val and train stores: five arrays and meta.json each
    first_run = work / TrainConfig(**{**TRAIN.__dict__, "epochs": 1}).run_name()
    first_checkpoint = {p: p.read_bytes() for p in (first_run / "checkpoint").iterdir()}
    second = run(sharp_model, tmp_path, "second", work="shared", epochs=1, lr=1e-3)
    assert {p: p.stat().st_mtime_ns for p in cached} == cached  # nothing recomputed
    second_run = work / TrainConfig(**{**TRAIN.__dict__, "epochs": 1, "lr": 1e-3}).run_name()
    assert second_run != first_run and (second_run / "checkpoint").is_dir()
    assert {p: p.read_bytes() for p in (first_run / "checkpoint").iterdir()} == first_checkpoint
    weights = [safetensors.torch.load_file(out / "model.safetensors") for out in (first, second)]
    assert not torch.equal(weights[0]["lm_head.weight"], weights[1]["lm_head.weight"])


def test_a_grown_data_set_keeps_its_answers_and_writes_new_ones_in_bf16(sharp_model, tmp_path):
    """--regenerate-dtype bfloat16 on a work folder seeded with fp32 answers: those are reused, only the
    new prompts are answered, by a bf16 copy of the target; a folder from before the setting existed
    resumes as float32. With --features-dtype bfloat16 too, training.json says which features it had."""
    run(sharp_model, tmp_path, "small", data_overrides={"regenerate": 4}, epochs=1)
    small = tmp_path / "work-small"
    settings = json.loads((small / "settings.json").read_text())
    del settings["regenerate_dtype"]  # as written before the setting existed
    (small / "settings.json").write_text(json.dumps(settings))
    run(sharp_model, tmp_path, "small", data_overrides={"regenerate": 4}, epochs=1)
    grown = tmp_path / "work-grown"
    grown.mkdir()
    shutil.copy(small / "regenerated.jsonl", grown)
    grown_data = {"regenerate_dtype": "bfloat16", "features_dtype": "bfloat16"}
    out = run(sharp_model, tmp_path, "grown", data_overrides=grown_data, epochs=1)
    before = (small / "regenerated.jsonl").read_text().splitlines()
    after = (grown / "regenerated.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 8
    assert [json.loads(line)["dtype"] for line in after] == ["float32"] * 4 + ["bfloat16"] * 4
    assert all(0 < len(json.loads(line)["answer"]) <= DATA.max_new_tokens for line in after)
    record = json.loads((out / "training.json").read_text())
    assert record["train_sequences_by_features_dtype"] == {"bfloat16": record["train_sequences"]}


def test_later_turns_are_answered_in_context_and_appended(sharp_model, tmp_path):
    """--regenerate-turns 3 answers turns 2 and 3 after the target's own earlier answers and trains on one
    more sequence per conversation (loss on those answers only), after every first turn: a work folder
    of first turns grows into it without recomputing a feature."""
    data = {"regenerate": 16, "max_length": 64}  # room for three short turns
    run(sharp_model, tmp_path, "first", work="turns-1", data_overrides=data, turns=3, epochs=1)
    grown = tmp_path / "work-turns-3"
    shutil.copytree(tmp_path / "work-turns-1", grown, ignore=shutil.ignore_patterns("settings.json", "run-*"))
    first_store = FeatureStore(grown / "features" / "train", 64)
    stored = {name: first_store.column(name).copy() for name in ("ids", "features")}
    run(
        sharp_model,
        tmp_path,
        "turns",
        work="turns-3",
        data_overrides={**data, "regenerate_turns": 3},
        turns=3,
        epochs=1,
    )
    lines = (grown / "regenerated.jsonl").read_text().splitlines()
    records = {(r["index"], r.get("turn", 1)): r for r in map(json.loads, lines)}
    later = sorted(key for key in records if key[1] > 1)
    assert later and all((i, turn - 1) in records for i, turn in later)  # a turn follows the one before
    for i, turn in later:
        before = records[i, turn - 1]
        assert records[i, turn]["prompt"][: len(before["prompt"]) + len(before["answer"])] == (
            before["prompt"] + before["answer"]
        )
    store = FeatureStore(grown / "features" / "train", 64)
    n = len(first_store)
    for name, column in stored.items():
        assert np.array_equal(store.column(name)[: len(column)], column)  # first turns kept, in place
    # Held-out conversations (the first 6 with an answer) give no later-turn sequence.
    held_out = sorted(i for i, turn in records if turn == 1)[: DATA.val_samples]
    last_turns = {i: max(t for j, t in later if j == i) for i, _ in later if i not in held_out}
    assert len(store) - n == len(last_turns) > 0
    offsets = np.concatenate([[0], np.cumsum(store.lengths)])
    masks = store.column("loss_mask").astype(bool)
    for k, (i, last) in enumerate(sorted(last_turns.items())):
        mask = masks[offsets[n + k] : offsets[n + k + 1]]
        assert mask.sum() == sum(len(records[i, t]["answer"]) for t in range(2, last + 1))


def test_merged_turns_make_one_sequence_per_conversation(sharp_model, tmp_path):
    """--merge-turns: a conversation with answered later turns is one sequence, in its first turn's place,
    with the loss on every answer; held-out conversations keep their first turn alone."""
    data = {"regenerate": 16, "max_length": 64, "regenerate_turns": 3}
    run(sharp_model, tmp_path, "separate", data_overrides=data, turns=3, epochs=1)
    run(sharp_model, tmp_path, "merged", data_overrides={**data, "merge_turns": True}, turns=3, epochs=1)
    work = tmp_path / "work-merged"
    records = {(r["index"], r["turn"]): r for r in map(json.loads, (work / "regenerated.jsonl").open())}
    firsts = sorted(i for i, turn in records if turn == 1)
    held_out = firsts[: DATA.val_samples]
    stores = {split: FeatureStore(work / "features" / split, 64) for split in ("val", "train")}
    stored = {}  # sequence ids -> answer tokens under the loss (a store keeps its sequences in length order)
    for store in stores.values():
        offsets = np.concatenate([[0], np.cumsum(store.lengths)])
        ids, masks = store.column("ids"), store.column("loss_mask").astype(bool)
        for a, b in itertools.pairwise(offsets):
            stored[tuple(ids[a:b].tolist())] = int(masks[a:b].sum())
    merged = 0
    for i in firsts:
        last = 1 if i in held_out else max(t for j, t in records if j == i)
        record = records[i, last]
        answers = sum(len(records[i, t]["answer"]) for t in range(1, last + 1))
        assert stored[tuple(record["prompt"] + record["answer"])] == answers
        merged += last > 1
    assert merged > 0
    sequences = sum(len(store) for store in stores.values())
    separate = sum(len(FeatureStore(tmp_path / "work-separate" / "features" / split, 64)) for split in stores)
    assert sequences == separate - merged  # no sequence of its own for any later turn


def test_self_written_prompts_are_answered_and_trained_on(tiny_model, tmp_path, monkeypatch):
    """--self-prompts: requests the target writes itself become more conversations after the regenerated
    ones, each answered by the target and trained on; a rerun reuses the requests and answers."""
    from transformers import AutoTokenizer

    from eaglex.train import selfprompts
    from eaglex.train.data import encode_prompt

    # The tiny random model (near-uniform, unlike the sharp one) ends a few requests in 24 tokens; a chat
    # model ends nearly all of them.
    monkeypatch.setattr(selfprompts, "MAX_PROMPT_TOKENS", 24)
    monkeypatch.setattr(selfprompts, "MAX_WRITTEN_PER_KEPT", 256)
    model, data = tiny_model("llama"), {"self_prompts": 5, "max_length": 64}
    plain = run(model, tmp_path, "plain", data_overrides={"max_length": 64}, epochs=1)
    out = run(model, tmp_path, "self", data_overrides=data, epochs=1)
    work = tmp_path / "work-self"
    requests = (work / "self_prompts.jsonl").read_bytes()
    records = [json.loads(line) for line in (work / "regenerated.jsonl").open()]
    tokenizer = AutoTokenizer.from_pretrained(model)
    written = sorted((r for r in records if r["index"] >= DATA.regenerate), key=lambda r: r["index"])
    assert [r["index"] for r in written] == list(range(DATA.regenerate, DATA.regenerate + 5))
    # Each prompt is the template around a request of its own: prefix, the request's words, suffix.
    prefix = selfprompts.user_turn_prefix(tokenizer)
    suffix = encode_prompt(tokenizer, [{"role": "user", "content": ""}])[len(prefix) :]
    for record in written:
        prompt = record["prompt"]
        assert prompt[: len(prefix)] == prefix and prompt[-len(suffix) :] == suffix
        assert len(prompt) - len(prefix) - len(suffix) >= selfprompts.MIN_WORDS
        assert 0 < len(record["answer"]) <= DATA.max_new_tokens
    assert len({tuple(r["prompt"]) for r in written}) == 5
    trained = [json.loads((o / "training.json").read_text()) for o in (plain, out)]
    assert trained[1]["train_sequences"] == trained[0]["train_sequences"] + 5
    assert trained[1]["data"]["self_prompts"] == 5
    answers = (work / "regenerated.jsonl").read_bytes()
    run(model, tmp_path, "self", data_overrides=data, epochs=1)
    assert (work / "self_prompts.jsonl").read_bytes() == requests
    assert (work / "regenerated.jsonl").read_bytes() == answers


def test_cached_features_are_the_runtime_targets(tiny_model, tmp_path):
    """The features and logits training learns from are those of the exported target's torch module."""
    from transformers import AutoModelForCausalLM

    from eaglex.train.data import Sample

    model_dir = tiny_model("llama")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    target = load_target(model_dir)
    samples = [Sample(list(range(3, 3 + n)), [True] * n) for n in (9, 17, 5)]
    features = TargetFeatures(hf, target.feature_layers)
    extract(features, samples[:2], FeatureStore(tmp_path / "store", 64), 40, lambda _: None)
    # A larger data set appends only the sequence the store lacks.
    extract(features, samples, FeatureStore(tmp_path / "store", 64), 40, lambda _: None)
    store = FeatureStore(tmp_path / "store", 64)
    assert store.lengths == [9, 17, 5]
    resumed = []
    extract(features, samples[::-1], FeatureStore(tmp_path / "store", 64), 40, resumed.append)
    assert resumed == [] and FeatureStore(tmp_path / "store", 64).lengths == store.lengths
    with pytest.raises(EaglexError, match="other sequences"):
        extract(features, samples[:2], FeatureStore(tmp_path / "store", 64), 40, lambda _: None)
    stored = {length: i for i, length in enumerate(store.lengths)}
    for sample in samples:
        n = len(sample.ids)
        kv = target.config.num_kv_heads
        past = [torch.zeros(1, kv, n, target.config.head_dim) for _ in range(2 * target.config.num_layers)]
        logits, features, *_ = target(
            torch.tensor([sample.ids]),
            torch.arange(n)[None],
            torch.full((n, n), float("-inf")).triu(1)[None, None],
            torch.tensor([n - 1], dtype=torch.int32),
            torch.tensor(n, dtype=torch.int32),
            torch.arange(n),
            past,
        )
        batch = store.batch([stored[n]])
        torch.testing.assert_close(batch.features[0], features[0], rtol=2e-3, atol=2e-3)  # fp16 cache
        teacher = batch.final_hidden[0] @ target.lm_head.weight.T
        torch.testing.assert_close(teacher, logits[0], rtol=1e-2, atol=1e-2)
        assert torch.equal(batch.argmax[0], logits[0].argmax(-1))
        assert batch.ids[0].tolist() == sample.ids


def test_bf16_features_grow_an_fp32_store_and_stay_close(tiny_model, tmp_path):
    """--features-dtype bfloat16: new sequences are computed under bf16 autocast and recorded as such next
    to the fp32 ones; their features are near fp32's (yet not equal: autocast did run)."""
    from transformers import AutoModelForCausalLM

    from eaglex.train.data import Sample

    model_dir = tiny_model("llama")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    layers = load_target(model_dir).feature_layers
    samples = [Sample(list(range(3, 3 + n)), [True] * n) for n in (9, 17, 5)]
    extract(TargetFeatures(hf, layers), samples[:2], FeatureStore(tmp_path / "fp32", 64), 40, lambda _: None)
    meta = json.loads((tmp_path / "fp32" / "meta.json").read_text())
    del meta["dtypes"]  # as written before precisions were recorded
    (tmp_path / "fp32" / "meta.json").write_text(json.dumps(meta))
    assert FeatureStore(tmp_path / "fp32", 64).dtypes == ["float32"] * 2
    before = FeatureStore(tmp_path / "fp32", 64).column("features").copy()
    lines = []
    bf16 = TargetFeatures(hf, layers, "bfloat16")
    extract(bf16, samples, FeatureStore(tmp_path / "fp32", 64), 40, lines.append)
    grown = FeatureStore(tmp_path / "fp32", 64)
    assert grown.dtypes == ["float32", "float32", "bfloat16"] and grown.lengths == [9, 17, 5]
    assert lines[-1].endswith("by target dtype: 1 bfloat16, 2 float32")
    extract(TargetFeatures(hf, layers), samples, FeatureStore(tmp_path / "ref", 64), 40, lambda _: None)
    reference = FeatureStore(tmp_path / "ref", 64)  # all in fp32, in its own (length) order
    fp32 = reference.batch([reference.lengths.index(5)])
    computed = grown.batch([2])
    error = (computed.features - fp32.features).norm() / fp32.features.norm()
    assert 0 < error < 2e-2
    assert 0 < (computed.final_hidden - fp32.final_hidden).abs().max() < 0.1
    assert np.array_equal(grown.column("features")[: len(before)], before)  # the fp32 sequences are kept


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_bf16_features_are_autocast_over_the_fp32_model_bit_for_bit(tiny_model, architecture):
    """TargetFeatures casts the linear weights to bf16 once, in a copy: what it returns must be exactly
    what bf16 autocast over the caller's fp32 model gives (tied embeddings in llama, untied in qwen2), and
    the caller's model must keep its fp32 weights and its tie."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(architecture)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = load_target(model_dir).feature_layers
    ids = torch.randint(3, hf.config.vocab_size, (3, 23), generator=torch.Generator().manual_seed(0))
    features, final, argmax = TargetFeatures(hf, layers, "bfloat16")(ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = hf(input_ids=ids, output_hidden_states=True)
    # hidden_states[i] is the residual stream entering layer i; the last one is the final normed hidden.
    expected = torch.cat([out.hidden_states[i].float() for i in layers], dim=-1)
    assert torch.equal(features, expected)
    assert torch.equal(final, out.hidden_states[-1].float())
    assert torch.equal(argmax, out.logits.argmax(-1))
    assert all(p.dtype == torch.float32 for p in hf.parameters())
    tied = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    assert tied == (architecture == "llama")


def fake_eval_wheels(cache: Path) -> None:
    """The benchmark wheels, each holding one record, so the CLI runs offline and fast."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    for spec in SOURCES.values():
        name, version = spec.package.split("==")
        record = {field: [EVAL_PROMPT] if field == "turns" else EVAL_PROMPT for field in spec.fields}
        raw = (json.dumps(record) + "\n").encode()
        with zipfile.ZipFile(wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(spec.path, gzip.compress(raw) if spec.path.endswith(".gz") else raw)


def test_cli_trains_a_drafter(tiny_model, tmp_path):
    fake_eval_wheels(tmp_path / "cache")
    data = write_conversations(tmp_path / "conversations.jsonl")
    out = tmp_path / "drafter"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eaglex.cli",
            "train-drafter",
            "--model",
            str(tiny_model("llama")),
            "--out",
            str(out),
            "--data",
            str(data),
            "--samples",
            "0",
            "--max-length",
            "48",
            "--val-samples",
            "4",
            "--draft-vocab-size",
            "40",
            "--ttt-steps",
            "2",
            "--epochs",
            "1",
            "--batch-tokens",
            "160",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "EAGLEX_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "1 dropped for containing an evaluation prompt" in result.stderr
    assert "target features (train)" in result.stderr and "left" in result.stderr  # progress with ETA
    assert (
        len(list((tmp_path / "cache" / "train" / "drafter").glob("run-*/checkpoint/trainer_state.pt"))) == 1
    )
    record = json.loads((out / "training.json").read_text())
    assert np.isfinite(record["validation"]["chain_acceptance_estimate"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--regenerate-turns", "0"], "--regenerate-turns 0: give 1"),
        (["--rechoose-vocab"], "--rechoose-vocab needs --init-from"),
        (["--merge-turns"], "pass --regenerate-turns 2 or more"),
        (["--device", "tpu"], "--device tpu: give cpu, cuda, cuda:N or auto"),
        (["--regenerate-workers", "0"], "--regenerate-workers 0: give 1, or more only on a CPU"),
        pytest.param(
            ["--device", "cuda"],
            "sees no CUDA GPU: pass --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here"),
        ),
    ],
)
def test_cli_refuses_bad_training_flags_in_one_line(tmp_path, flags, message):
    args = ["train-drafter", "--model", str(tmp_path), "--out", str(tmp_path / "out"), *flags]
    result = subprocess.run([sys.executable, "-m", "eaglex.cli", *args], capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("native", [True, False])
def test_cli_warns_when_this_cpu_would_emulate_bf16(tmp_path, monkeypatch, native):
    """Without AVX512-BF16 or AMX torch emulates bfloat16 matrix products, several times slower than fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    args = ["train-drafter", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--bf16", "--features-dtype", "bfloat16"])
    assert result.exit_code != 0 and "no such folder" in result.stderr  # the run itself goes on as asked
    warned = "warning: --features-dtype bfloat16, --bf16: this CPU" in result.stderr
    assert warned == (not native)


def test_a_feature_store_without_sequence_hashes_is_refused(tmp_path):
    """Stores from before per-sequence hashes cannot be grown safely: the error says to recompute."""
    (tmp_path / "meta.json").write_text(json.dumps({"fingerprint": "abc", "lengths": [3]}))
    with pytest.raises(EaglexError, match="older eaglex: delete it"):
        FeatureStore(tmp_path, 64)
