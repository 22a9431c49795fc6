"""Drafter training in fp32 against bf16 autocast (`train-drafter --bf16`), interleaved batch by batch:

    python experiments/compare_train_precision.py --model smollm2 --drafter DRAFTER --work-dir WORK
        [--steps 40] [--batch-tokens 1024] [--lr 1e-4] [--threads 2]

Both start from the same drafter and train on the same batches of WORK's cached features (a train-drafter
work folder); prints each precision's training tokens/s and the validation loss and top-1 per TTT step
after the steps. Only the ratio in one run means anything on a shared machine.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness
import torch

from eaglex.cli import resolve_model
from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.exporter.drafter import Eagle3Drafter
from eaglex.exporter.target import TargetConfig
from eaglex.train.features import FeatureStore, length_batches
from eaglex.train.loop import TrainConfig, Trainer, iter_epoch


@dataclass
class Start:
    """What every compared trainer starts from: the target's config and frozen tables, and one drafter."""

    config: TargetConfig
    drafter: Eagle3Drafter
    embed: torch.Tensor
    teacher_head: torch.Tensor  # the lm_head rows of the draft vocabulary

    def trainer(self, settings: TrainConfig) -> Trainer:
        """A Trainer on a fresh copy of the starting drafter, in training mode."""
        scratch = Path(tempfile.mkdtemp()) / "checkpoint"  # Trainer wants one; nothing is saved
        positions = self.config.max_position_embeddings
        trainer = Trainer(
            copy.deepcopy(self.drafter), self.embed, self.teacher_head, settings, scratch, positions, print
        )
        trainer.drafter.train()
        return trainer


def load_start(model: str, drafter: Path) -> Start:
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(model)
    config = read_target_config(model_dir)
    target = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    start = load_drafter(drafter, config)
    embed = target.get_input_embeddings().weight.detach().clone()
    teacher_head = target.get_output_embeddings().weight.detach()[start.target_ids()].clone()
    return Start(config, start, embed, teacher_head)


def train_interleaved(
    trainers: dict[str, Trainer],
    store: FeatureStore,
    steps: int,
    batch_tokens: int,
    before: Callable[[str], None] = lambda name: None,
) -> tuple[dict[str, float], dict[str, list[float]], int]:
    """Trains every trainer on the same batches, one after another per batch, so that the machine's drift
    hits all alike. `before(name)` runs ahead of each trainer's step, untimed. Returns each trainer's
    seconds and losses, and the number of tokens each trained on."""
    seconds = dict.fromkeys(trainers, 0.0)
    losses: dict[str, list[float]] = {name: [] for name in trainers}
    tokens = 0
    batches = iter_epoch(length_batches(store.lengths, batch_tokens), seed=0, epoch=0)
    for step, indices in zip(range(steps), batches, strict=False):
        batch = store.batch(indices)
        tokens += int(batch.lengths.sum())
        for name, trainer in trainers.items():
            before(name)
            started = time.perf_counter()
            out = trainer.optimize(batch)
            seconds[name] += time.perf_counter() - started
            losses[name].append(float(out.loss.detach()))
        if (step + 1) % 10 == 0:
            rates = ", ".join(f"{n}: {tokens / s:.0f} tokens/s" for n, s in seconds.items())
            print(f"step {step + 1}/{steps}: {rates}", flush=True)
    return seconds, losses, tokens


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--drafter", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ttt-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = load_start(args.model, args.drafter)
    hidden = start.config.hidden_size
    stores = {s: FeatureStore(args.work_dir / "features" / s, hidden) for s in ("train", "val")}
    trainers = {
        name: start.trainer(
            TrainConfig(
                draft_vocab_size=len(start.drafter.d2t),
                ttt_steps=args.ttt_steps,
                batch_tokens=args.batch_tokens,
                lr=args.lr,
                bf16=name == "bf16",
            )
        )
        for name in ("fp32", "bf16")
    }
    seconds, _, tokens = train_interleaved(trainers, stores["train"], args.steps, args.batch_tokens)
    for name, trainer in trainers.items():
        trainer.config = trainers["fp32"].config  # both validated in fp32: only the training differed
        trainer.drafter.eval()
        stats = trainer.evaluate(stores["val"])
        print(f"{name}: {tokens / seconds[name]:.0f} training tokens/s; validation {stats.summary()}")
    print(f"bf16 / fp32 training speed: {seconds['fp32'] / seconds['bf16']:.2f}x")


if __name__ == "__main__":
    main()
