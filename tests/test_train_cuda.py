"""The trainer on a CUDA GPU: the same pipeline as on the CPU (answers, features, training, checkpoint), with
results that match the CPU run's, and a checkpoint that resumes on the CPU.

These run where torch sees a GPU (scripts/gpu_train_check.sh on a lent H200 ran them; docs/TRAINING.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_train_drafter import log, run

from eaglex.train.features import FeatureStore

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU, and torch sees none here (scripts/gpu_train_check.sh runs these on one)",
)


def work(out: Path) -> Path:
    return out.parent / f"work-{out.name}"


def answers(out: Path) -> list[list[int]]:
    lines = (work(out) / "regenerated.jsonl").read_text().splitlines()
    return [json.loads(line)["answer"] for line in lines]


def val_losses(out: Path) -> list[float]:
    """Validation loss after each epoch (0: before training), from the run's log (`log` of
    test_train_drafter: --bf16 does not change the run's folder name)."""
    record = json.loads((out / "training.json").read_text())
    assert record["validation"]["chain_acceptance_estimate"] > 0
    return [r["val_loss"] for r in log(out) if "val_loss" in r]


def test_cuda_run_matches_the_cpu_run_and_resumes_on_the_cpu(sharp_model, tmp_path):
    cpu = run(sharp_model, tmp_path, "cpu")
    gpu = run(sharp_model, tmp_path, "gpu", device="cuda")
    # fp32 greedy answers are the same tokens; the target's features agree to fp16 storage precision.
    assert answers(gpu) == answers(cpu)
    cpu_store, gpu_store = (FeatureStore(work(out) / "features" / "train", 64) for out in (cpu, gpu))
    assert cpu_store.lengths == gpu_store.lengths
    want_features = cpu_store.column("features").astype("f4")
    feature_diff = (abs(gpu_store.column("features") - want_features) / (1 + abs(want_features))).max()
    assert feature_diff < 1e-2, feature_diff
    # The same initialisation and batches: training follows the CPU run up to float rounding.
    cpu_losses, gpu_losses = val_losses(cpu), val_losses(gpu)
    print(f"validation loss per epoch, cpu {cpu_losses}, cuda {gpu_losses}")
    print(f"features: max relative difference {feature_diff:.2e}")
    assert cpu_losses[-1] < 0.8 * cpu_losses[0]
    for a, b in zip(cpu_losses, gpu_losses, strict=True):
        assert abs(a - b) < 0.01 * a, (cpu_losses, gpu_losses)
    want = safetensors.torch.load_file(cpu / "model.safetensors")
    got = safetensors.torch.load_file(gpu / "model.safetensors")
    for key, value in want.items():
        drift = (got[key].float() - value.float()).norm() / value.float().norm().clamp(min=1e-6)
        assert drift < 0.02, (key, float(drift))

    # Rerun on the CPU in the GPU run's folder: the finished checkpoint is found and written out unchanged.
    resumed = run(sharp_model, tmp_path, "gpu", device="cpu")
    again = safetensors.torch.load_file(resumed / "model.safetensors")
    for key, value in got.items():
        assert torch.equal(again[key], value), key


def test_bf16_on_cuda_lowers_the_loss(sharp_model, tmp_path):
    """The settings a GPU run would use: bf16 answers and features, bf16 autocast training."""
    bf16 = {"regenerate_dtype": "bfloat16", "features_dtype": "bfloat16"}
    out = run(sharp_model, tmp_path, "bf16", device="cuda", data_overrides=bf16, bf16=True)
    losses = val_losses(out)
    assert losses[-1] < 0.8 * losses[0], losses
    record = json.loads((out / "training.json").read_text())
    assert record["train_sequences_by_features_dtype"] == {"bfloat16": record["train_sequences"]}
