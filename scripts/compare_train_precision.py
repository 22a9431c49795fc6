"""Drafter training in fp32 against bf16 autocast (`train-drafter --bf16`), interleaved batch by batch:

    python scripts/compare_train_precision.py --model smollm2 --drafter DRAFTER --work-dir WORK
        [--steps 40] [--batch-tokens 1024] [--lr 1e-4] [--threads 2]

Both start from the same drafter and train on the same batches of WORK's cached features (a train-drafter
work folder); prints each precision's training tokens/s and the validation loss and top-1 per TTT step
after the steps. Only the ratio in one run means anything on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from eaglex.cli import resolve_model
from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.exporter.train.features import FeatureStore, length_batches
from eaglex.exporter.train.loop import TrainConfig, Trainer, iter_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--drafter", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-4)
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
    stores = {s: FeatureStore(args.work_dir / "features" / s, config.hidden_size) for s in ("train", "val")}
    trainers, seconds, tokens = {}, {}, 0
    for name in ("fp32", "bf16"):
        settings = TrainConfig(
            draft_vocab_size=len(start.d2t),
            ttt_steps=args.ttt_steps,
            batch_tokens=args.batch_tokens,
            lr=args.lr,
            bf16=name == "bf16",
        )
        scratch = Path(tempfile.mkdtemp()) / name / "checkpoint"  # Trainer wants one; nothing is saved
        drafter, positions = copy.deepcopy(start), config.max_position_embeddings
        trainers[name] = Trainer(drafter, embed, teacher_head, settings, scratch, positions, print)
        trainers[name].drafter.train()
        seconds[name] = 0.0
    batches = iter_epoch(length_batches(stores["train"].lengths, args.batch_tokens), seed=0, epoch=0)
    for step, indices in zip(range(args.steps), batches, strict=False):
        batch = stores["train"].batch(indices)
        tokens += int(batch.lengths.sum())
        for name, trainer in trainers.items():
            started = time.perf_counter()
            out = trainer.forward(batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.drafter.parameters(), trainer.config.grad_clip)
            trainer.optimizer.step()
            seconds[name] += time.perf_counter() - started
        if (step + 1) % 10 == 0:
            rates = ", ".join(f"{n} {tokens / s:.0f} tokens/s" for n, s in seconds.items())
            print(f"step {step + 1}/{args.steps}: {rates}", flush=True)
    for name, trainer in trainers.items():
        trainer.config = trainers["fp32"].config  # both validated in fp32: only the training differed
        trainer.drafter.eval()
        stats = trainer.evaluate(stores["val"])
        print(f"{name}: {tokens / seconds[name]:.0f} training tokens/s; validation {stats.summary()}")
    print(f"bf16 / fp32 training speed: {seconds['fp32'] / seconds['bf16']:.2f}x")


if __name__ == "__main__":
    main()
