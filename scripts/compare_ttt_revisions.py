"""Drafter training speed with exporter/train/ttt.py at another git revision against the working tree's,
interleaved batch by batch on the same batches and weights:

    python scripts/compare_ttt_revisions.py --old REV --drafter DRAFTER --work-dir WORK
        [--steps 30] [--batch-tokens 1024] [--ttt-steps 5] [--threads 2]

Trains two copies of DRAFTER on WORK's cached features (a train-drafter work folder) in bf16 autocast, as
`train-drafter --bf16` does: one with REV's `ttt_forward`, one with the current one. Prints each one's
training tokens/s and the largest difference between their losses (the same function computed two ways
agrees to rounding). Only the ratio in one run means anything on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from eaglex.cli import resolve_model
from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.exporter.train import loop
from eaglex.exporter.train.features import FeatureStore, length_batches
from eaglex.exporter.train.loop import TrainConfig, Trainer, iter_epoch


def ttt_at(revision: str):
    """`ttt_forward` as exporter/train/ttt.py defines it at `revision`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:exporter/train/ttt.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "ttt_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ttt_old", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["ttt_old"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.ttt_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of the ttt.py to compare against")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--drafter", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--ttt-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(args.model)
    config = read_target_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    start = load_drafter(args.drafter, config)
    draft_ids = start.target_ids()
    embed = model.get_input_embeddings().weight.detach().clone()
    teacher_head = model.get_output_embeddings().weight.detach()[draft_ids].clone()
    del model
    store = FeatureStore(args.work_dir / "features" / "train", config.hidden_size)
    forwards = {args.old: ttt_at(args.old), "working tree": loop.ttt_forward}
    settings = TrainConfig(
        draft_vocab_size=len(start.d2t), ttt_steps=args.ttt_steps, batch_tokens=args.batch_tokens, bf16=True
    )
    trainers, seconds, losses, tokens = {}, {}, {}, 0
    for name in forwards:
        scratch = Path(tempfile.mkdtemp()) / "checkpoint"  # Trainer wants one; nothing is saved
        drafter, positions = copy.deepcopy(start), config.max_position_embeddings
        trainers[name] = Trainer(drafter, embed, teacher_head, settings, scratch, positions, print)
        trainers[name].drafter.train()
        seconds[name], losses[name] = 0.0, []
    batches = iter_epoch(length_batches(store.lengths, args.batch_tokens), seed=0, epoch=0)
    for step, indices in zip(range(args.steps), batches, strict=False):
        batch = store.batch(indices)
        tokens += int(batch.lengths.sum())
        for name, trainer in trainers.items():
            loop.ttt_forward = forwards[name]  # what Trainer.forward calls
            started = time.perf_counter()
            out = trainer.forward(batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.drafter.parameters(), trainer.config.grad_clip)
            trainer.optimizer.step()
            seconds[name] += time.perf_counter() - started
            losses[name].append(float(out.loss.detach()))
        if (step + 1) % 10 == 0:
            rates = ", ".join(f"{n}: {tokens / s:.0f} tokens/s" for n, s in seconds.items())
            print(f"step {step + 1}/{args.steps}: {rates}", flush=True)
    old, new = seconds.values()
    gap = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    print(f"working tree / {args.old}: {old / new:.2f}x faster; largest loss difference {gap:.2e}")


if __name__ == "__main__":
    main()
