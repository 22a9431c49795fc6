"""The optimisation loop: AdamW (0.9, 0.95) with linear warmup and cosine decay, gradient clipping,
length-bucketed batches in a seeded order, periodic checkpoints and exact resume."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from eaglex.exporter.drafter import Eagle3Drafter

from .checkpoint import read_trainer_state, write_drafter
from .features import Batch, FeatureStore, LiveFeatures, length_batches
from .kernels import planless_attention
from .progress import Progress
from .ttt import TTTOutput, ttt_forward


@dataclass(frozen=True)
class TrainConfig:
    draft_vocab_size: int = 8192
    ttt_steps: int = 7
    decay: float = 0.8  # step j's loss weighs decay**j
    epochs: int = 2
    batch_tokens: int = 4096  # padded tokens per optimizer step
    lr: float = 3e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    seed: int = 0
    save_minutes: float = 10.0  # checkpoint at least this often (and after every epoch)
    init_from: str = ""  # a drafter (official format) to start from instead of a random initialisation
    rechoose_vocab: bool = False  # with init_from: choose the draft vocabulary afresh from this data
    bf16: bool = False  # matrix products in bfloat16 (autocast); weights, optimizer and losses stay fp32

    def run_name(self) -> str:
        """Names the folder of this training run from the settings that shape it: not the checkpoint
        interval, nor the matmul precision (how it computes, not what: a run may resume either way)."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("save_minutes", "bf16")}
        return "run-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class StepStats:
    """Sums over the batches since the last report (or over a whole evaluation)."""

    loss: float = 0.0
    batches: int = 0
    correct: list[int] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)

    def add(self, out: TTTOutput) -> None:
        self.loss += float(out.loss.detach())
        self.batches += 1
        self.correct = [
            a + b for a, b in zip(self.correct or [0] * len(out.step_correct), out.step_correct, strict=True)
        ]
        self.counted = [
            a + b for a, b in zip(self.counted or [0] * len(out.step_counted), out.step_counted, strict=True)
        ]

    @property
    def accuracy(self) -> list[float]:
        """Per step: how often the drafter's top token is the target's (given true earlier tokens)."""
        return [c / max(n, 1) for c, n in zip(self.correct, self.counted, strict=True)]

    def chain_acceptance(self) -> float:
        """Mean acceptance length a greedy chain draft of these depths would get if each depth's accuracy
        held independently: 1 (bonus token) + sum over depths of the product of accuracies so far."""
        total, alive = 1.0, 1.0
        for accuracy in self.accuracy:
            alive *= accuracy
            total += alive
        return total

    def summary(self) -> str:
        accuracy = "/".join(f"{a:.2f}" for a in self.accuracy)
        loss = self.loss / max(self.batches, 1)
        return f"loss {loss:.3f} acc {accuracy} chain tau~{self.chain_acceptance():.2f}"


def iter_epoch(batches: list[list[int]], seed: int, epoch: int) -> Iterator[list[int]]:
    """The batches in a shuffled order that depends only on (seed, epoch), so a resumed run repeats it."""
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    for i in order.tolist():
        yield batches[i]


class Trainer:
    """Trains `drafter` on a feature store; the target contributes its embedding table and the lm_head rows
    of the draft vocabulary (the teacher's logits are those rows times the stored final hidden).

    Everything lives on `device` (weights, optimizer state, each batch once read from the store); checkpoints
    are written from CPU copies, so a run may resume on another device."""

    def __init__(
        self,
        drafter: Eagle3Drafter,
        embed: Tensor,
        teacher_head: Tensor,
        config: TrainConfig,
        checkpoint_dir: Path,
        max_position_embeddings: int,
        report: Callable[[str], None],
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.drafter = drafter.to(self.device)
        self.embed, self.teacher_head = embed.to(self.device), teacher_head.to(self.device)
        self.config, self.checkpoint_dir, self.report = config, checkpoint_dir, report
        self.max_position_embeddings = max_position_embeddings
        checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)  # the run folder also holds the log
        self.optimizer = torch.optim.AdamW(
            [p for p in drafter.parameters() if p.requires_grad],
            lr=config.lr,
            betas=(0.9, 0.95),
            weight_decay=config.weight_decay,
        )
        self.step = self.epoch = self.batch_in_epoch = self.tokens = 0
        self.seconds = 0.0  # training time over all sessions, for the record of what a drafter cost

    def lr_at(self, step: int, total_steps: int) -> float:
        config = self.config
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)

    def forward(self, batch: Batch) -> TTTOutput:
        batch = batch.to(self.device)
        teacher_logits = batch.final_hidden @ self.teacher_head.T
        # A position is learned when its token is an assistant token and the target's greedy choice before
        # it has a draft id (else the restricted teacher would teach a token the target would not pick).
        has_draft_id = self.drafter.t2d[batch.argmax]
        weight = torch.zeros_like(batch.loss_mask)
        weight[:, 1:] = batch.loss_mask[:, 1:] & has_draft_id[:, :-1]
        bf16 = self.config.bf16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16), planless_attention():
            return ttt_forward(
                self.drafter,
                self.embed,
                batch.ids,
                batch.features,
                teacher_logits,
                weight,
                self.config.ttt_steps,
                self.config.decay,
            )

    def optimize(self, batch: Batch) -> TTTOutput:
        """One optimizer step on `batch`, at the learning rate the optimizer holds: loss, gradients clipped
        to `grad_clip`, AdamW."""
        out = self.forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.drafter.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return out

    @torch.no_grad()
    def evaluate(self, store: FeatureStore) -> StepStats:
        stats = StepStats()
        for batch in length_batches(store.lengths, self.config.batch_tokens):
            stats.add(self.forward(store.batch(batch)))
        return stats

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "config": asdict(self.config),
        }

    def save(self) -> None:
        write_drafter(
            self.drafter,
            self.checkpoint_dir,
            self.max_position_embeddings,
            torch.float32,
            extra=self.budget(),
            trainer_state=self._state(),
        )

    def resume(self) -> bool:
        """Loads the latest checkpoint if there is one (its folder is named after the settings)."""
        state = read_trainer_state(self.checkpoint_dir)
        if state is None:
            return False
        weights = safetensors.torch.load_file(Path(state["folder"]) / "model.safetensors")
        self.drafter.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        for key in ("step", "epoch", "batch_in_epoch", "tokens", "seconds"):
            setattr(self, key, state[key])
        return True

    def budget(self) -> dict[str, Any]:
        hours = round(self.seconds / 3600, 3)
        return {"optimizer_steps": self.step, "trained_tokens": self.tokens, "train_hours": hours}

    def train(self, store: FeatureStore | LiveFeatures, val: FeatureStore | None = None) -> StepStats | None:
        """Runs (or finishes) the configured epochs; returns the final validation stats, if any."""
        config = self.config
        batches = length_batches(store.lengths, config.batch_tokens)
        total_steps = config.epochs * len(batches)
        if self.resume():
            self.report(f"resumed at epoch {self.epoch + 1}, optimizer step {self.step}/{total_steps}")
        elif val is not None and len(val):
            self.validate(val)  # the untrained baseline, logged as epoch 0
        progress = Progress("train", config.epochs * store.num_tokens, self.report, done=self.tokens)
        last_save = time.perf_counter()
        stats = StepStats()
        result: StepStats | None = None
        self.drafter.train()
        while self.epoch < config.epochs:
            for k, batch_indices in enumerate(iter_epoch(batches, config.seed, self.epoch)):
                if k < self.batch_in_epoch:
                    continue
                started = time.perf_counter()
                batch = store.batch(batch_indices)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(self.step, total_steps)
                out = self.optimize(batch)
                stats.add(out)
                self.step += 1
                self.batch_in_epoch = k + 1
                tokens = int(batch.lengths.sum())
                self.tokens += tokens
                self.seconds += time.perf_counter() - started
                note = f"epoch {self.epoch + 1}/{config.epochs} step {self.step}/{total_steps}"
                note += f", {stats.summary()}"
                before = progress.last_report
                progress.update(tokens, note)
                if progress.last_report != before:
                    self._log(
                        {
                            "step": self.step,
                            "tokens": self.tokens,
                            "loss": stats.loss / stats.batches,
                            "accuracy": stats.accuracy,
                            "lr": self.lr_at(self.step - 1, total_steps),
                        }
                    )
                    stats = StepStats()
                if time.perf_counter() - last_save >= 60 * config.save_minutes:
                    self.save()
                    last_save = time.perf_counter()
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save()
            last_save = time.perf_counter()
            if val is not None and len(val):
                result = self.validate(val)
                self.drafter.train()
        self.drafter.eval()
        if val is not None and len(val):
            return result if result is not None else self.validate(val)
        return None

    def validate(self, val: FeatureStore) -> StepStats:
        self.drafter.eval()
        result = self.evaluate(val)
        self.report(f"validation after epoch {self.epoch}: {result.summary()}")
        loss = result.loss / max(result.batches, 1)
        self._log(
            {
                "step": self.step,
                "epoch": self.epoch,
                "val_loss": loss,
                "val_accuracy": result.accuracy,
                "val_chain_tau": result.chain_acceptance(),
            }
        )
        return result

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.checkpoint_dir.parent / "train_log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
