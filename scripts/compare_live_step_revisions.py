"""A `train-drafter --live-features --bf16` step (the target's features, then the drafter's training step)
with trainer/features.py and ttt.py at another git revision against the working tree's, interleaved
batch by batch on the same batches and starting weights:

    python scripts/compare_live_step_revisions.py --old REV [--drafter drafters/smollm2-135m-instruct]
        [--data drafters/data/smollm2-run11] [--steps 12] [--batch-tokens 1024] [--threads 2]

The sequences are SmolLM2's own packed answers with their prompts (scripts/work_data.py pack), batched as
the trainer batches them. Prints each revision's tokens/s, its features' and its drafter steps' seconds apart,
and whether both computed the same batches and losses bit for bit. Only the ratio in one run means
anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import lzma
import time
from pathlib import Path

import torch
from compare_train_precision import load_start
from compare_ttt_revisions import train_module_at

from eaglex.cli import resolve_model
from eaglex.train import features, loop
from eaglex.train.checkpoint import new_drafter_config
from eaglex.train.data import Sample
from eaglex.train.features import length_batches
from eaglex.train.loop import TrainConfig, iter_epoch


def packed_samples(folder: Path, count: int) -> list[Sample]:
    """`count` packed answers spread evenly over the pack (it runs from short prompts to long ones), each
    with its prompt, the answer's tokens learned."""
    with lzma.open(folder / "regenerated.jsonl.xz", "rt") as f:
        lines = f.readlines()
    samples = []
    for line in lines[:: max(1, len(lines) // count)][:count]:
        record = json.loads(line)
        prompt, answer = record["prompt"], record["answer"]
        samples.append(Sample(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of features.py and ttt.py to compare")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--drafter", type=Path, default=Path("drafters/smollm2-135m-instruct"))
    parser.add_argument("--data", type=Path, default=Path("drafters/data/smollm2-run11"))
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--ttt-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    start = load_start(args.model, args.drafter)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    layers = new_drafter_config(start.config, len(start.drafter.d2t)).feature_layers
    samples = packed_samples(args.data, args.samples)
    old_features = train_module_at(args.old, "features")
    # The working tree's first: a bf16 target copies the model, hooks included, and must not copy the old's.
    live = {
        "working tree": features.LiveFeatures(features.TargetFeatures(model, layers, "bfloat16"), samples),
        args.old: old_features.LiveFeatures(old_features.TargetFeatures(model, layers, "bfloat16"), samples),
    }
    forwards = {"working tree": loop.ttt_forward, args.old: train_module_at(args.old, "ttt").ttt_forward}
    vocab = len(start.drafter.d2t)
    settings = TrainConfig(vocab, ttt_steps=args.ttt_steps, batch_tokens=args.batch_tokens, bf16=True)
    trainers = {name: start.trainer(settings) for name in live}
    seconds = {name: [0.0, 0.0] for name in live}  # target features, drafter step
    same_batches = same_losses = tokens = 0
    batches = iter_epoch(length_batches(live[args.old].lengths, args.batch_tokens), seed=0, epoch=0)
    for step, indices in zip(range(args.steps + 1), batches, strict=False):
        made, losses = {}, {}
        # Each goes first every other batch; the first batch warms both up and is not counted.
        for name in sorted(trainers, reverse=step % 2 == 1):
            trainer = trainers[name]
            loop.ttt_forward = forwards[name]  # what Trainer.forward calls
            started = time.perf_counter()
            batch = live[name].batch(indices)
            computed = time.perf_counter()
            out = trainer.optimize(batch)
            if step > 0:
                seconds[name][0] += computed - started
                seconds[name][1] += time.perf_counter() - computed
            made[name], losses[name] = batch, float(out.loss.detach())
        if step > 0:
            tokens += int(batch.lengths.sum())
        first, second = made.values()  # in the order they ran this batch
        fields = ("features", "final_hidden", "argmax")
        same_batches += all(torch.equal(getattr(first, f), getattr(second, f)) for f in fields)
        same_losses += len(set(losses.values())) == 1
    for name, (target, drafter) in seconds.items():
        print(
            f"{name}: {tokens / (target + drafter):.0f} tokens/s "
            f"(features {target:.1f} s, drafter steps {drafter:.1f} s, {tokens} tokens)"
        )
    new, old = (sum(s) for s in seconds.values())
    print(f"working tree / {args.old}: {old / new:.2f}x faster")
    counted = args.steps + 1
    print(f"identical batches {same_batches}/{counted}, identical losses {same_losses}/{counted}")


if __name__ == "__main__":
    main()
