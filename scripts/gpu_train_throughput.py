"""`eaglex train-drafter --device cuda` at SmolLM2-135M-Instruct's size, timed per phase (run by
gpu_train_check.sh on a GPU machine, with the inputs prepare_gpu_train_check.py gathered in .device/).

The target has SmolLM2's config and tokenizer and random weights: it measures speed, not what a drafter
learns. Random weights never pick the end-of-turn token, so every answer runs to --max-new-tokens (160)
and a batch never shrinks: answers/s are a lower bound, generated tokens/s the comparable rate.

Run 1 does everything with run 8's settings (docs/TRAINING.md: 3 turns merged, bf16, 12,288-token draft
vocabulary, 5 TTT steps, 1,024-token batches); runs 2 and 3 train again from the same cached features with
larger batches, which a GPU wants. Prints a table and writes $OUT/gpu-train-throughput.json.

    python scripts/gpu_train_throughput.py                                   # on the GPU
    python scripts/gpu_train_throughput.py --device cpu --conversations 40   # a smoke run of this script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from eaglex.cli import main as eaglex_cli
from eaglex.train.features import FeatureStore
from eaglex.train.jsonl import peek_records

DEVICE_INPUTS = Path(".device")
WORK = Path("/tmp/gpu-train")
RUN8 = [
    "--regenerate-turns", "3", "--merge-turns", "--max-new-tokens", "160", "--max-length", "1024",
    "--val-samples", "32",
    "--regenerate-dtype", "bfloat16", "--features-dtype", "bfloat16", "--draft-vocab-size", "12288",
    "--ttt-steps", "5", "--bf16", "--epochs", "1", "--lr", "3e-4", "--warmup-steps", "20", "--seed", "0",
]  # fmt: skip


def random_target(folder: Path) -> Path:
    """SmolLM2-135M-Instruct's architecture and tokenizer with seeded random weights."""
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(DEVICE_INPUTS / "target")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    for path in (DEVICE_INPUTS / "target").iterdir():
        if path.name != "config.json":
            shutil.copy(path, folder / path.name)
    return folder


def train(target: Path, batch_tokens: int, device: str, conversations: int) -> dict:
    """One train-drafter run in this process; returns its phases' wall seconds and what they processed."""
    hours_file = WORK / "work" / "hours.json"
    before = json.loads(hours_file.read_text()) if hours_file.is_file() else {}
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    out = WORK / f"drafter-{batch_tokens}"
    args = ["train-drafter", "--model", str(target), "--out", str(out), "--data",
            str(DEVICE_INPUTS / "conversations.jsonl"), "--work-dir", str(WORK / "work"),
            "--samples", str(conversations), "--regenerate", str(conversations), "--batch-tokens",
            str(batch_tokens), "--device", device, "--threads", "8" if gpu else "2", *RUN8]  # fmt: skip
    started = time.perf_counter()
    eaglex_cli.main(args, standalone_mode=False)
    wall = time.perf_counter() - started
    hours = json.loads(hours_file.read_text())
    seconds = {phase: 3600 * (hours[phase] - before.get(phase, 0.0)) for phase in hours}
    record = json.loads((out / "training.json").read_text())
    return {
        "batch_tokens": batch_tokens,
        "wall_s": wall,
        "phase_s": seconds,
        "optimizer_steps": record["budget"]["optimizer_steps"],
        "trained_tokens": record["budget"]["trained_tokens"],
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0,
        "validation": record["validation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--conversations", type=int, default=1024)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA GPU: run this on a GPU machine, or pass --device cpu")
    os.environ["EAGLEX_CACHE"] = str(DEVICE_INPUTS.resolve() / "cache")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    target = random_target(WORK / "target")
    runs = [train(target, n, args.device, args.conversations) for n in (1024, 8192, 32768)]

    answers = peek_records(WORK / "work" / "regenerated.jsonl")
    generated = sum(len(a["answer"]) for a in answers)
    stores = [FeatureStore(WORK / "work" / "features" / split, 576) for split in ("val", "train")]
    feature_tokens = sum(store.num_tokens for store in stores)
    first = runs[0]
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "regenerate": {
            "answers": len(answers),
            "generated_tokens": generated,
            "seconds": first["phase_s"]["data"],
            "tokens_per_s": generated / first["phase_s"]["data"],
        },
        "features": {
            "tokens": feature_tokens,
            "seconds": first["phase_s"]["features"],
            "tokens_per_s": feature_tokens / first["phase_s"]["features"],
        },
        "train": runs,
    }
    print(f"\n{result['device']}, torch {result['torch']}")
    r = result["regenerate"]
    print(f"regenerate: {r['answers']} answers, {r['generated_tokens']} tokens in {r['seconds']:.1f} s: "
          f"{r['tokens_per_s']:.0f} generated tokens/s (bf16, batches of up to 256)")  # fmt: skip
    f = result["features"]
    print(f"features:   {f['tokens']} tokens in {f['seconds']:.1f} s: {f['tokens_per_s']:.0f} tokens/s")
    print("train (1 epoch, 5 TTT steps, vocab 12288, bf16):")
    # Wall time of the train phase, the validations before and after included (hours.json, 0.36 s steps).
    print("  batch tokens | steps | train phase s | tokens/s | peak GiB | val chain tau")
    for run in runs:
        seconds = run["phase_s"]["train"]
        print(f"  {run['batch_tokens']:>12} | {run['optimizer_steps']:>5} | {seconds:>13.1f} | "
              f"{run['trained_tokens'] / seconds:>8.0f} | {run['peak_gpu_gib']:>8.1f} | "
              f"{run['validation']['chain_acceptance_estimate']:.2f}")  # fmt: skip
    out = Path(os.environ.get("OUT", WORK))
    (out / "gpu-train-throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
