"""Drafter training speed with trainer/ttt.py at another git revision against the working tree's,
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
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from compare_train_precision import load_start, train_interleaved

from eaglex.train import loop
from eaglex.train.features import FeatureStore
from eaglex.train.loop import TrainConfig


def train_module_at(revision: str, name: str) -> ModuleType:
    """trainer/NAME.py as it is at `revision`, imported inside the package (as NAME_old), so that its
    relative imports find the working tree's modules."""
    source = subprocess.run(
        ["git", "show", f"{revision}:trainer/{name}.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}_old.py"
    path.write_text(source)
    qualified = f"eaglex.train.{name}_old"
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[qualified] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


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
    start = load_start(args.model, args.drafter)
    store = FeatureStore(args.work_dir / "features" / "train", start.config.hidden_size)
    forwards = {args.old: train_module_at(args.old, "ttt").ttt_forward, "working tree": loop.ttt_forward}
    settings = TrainConfig(
        draft_vocab_size=len(start.drafter.d2t),
        ttt_steps=args.ttt_steps,
        batch_tokens=args.batch_tokens,
        bf16=True,
    )
    trainers = {name: start.trainer(settings) for name in forwards}

    def use_forward(name: str) -> None:
        loop.ttt_forward = forwards[name]  # what Trainer.forward calls

    seconds, losses, _ = train_interleaved(trainers, store, args.steps, args.batch_tokens, use_forward)
    old, new = seconds.values()
    gap = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    print(f"working tree / {args.old}: {old / new:.2f}x faster; largest loss difference {gap:.2e}")


if __name__ == "__main__":
    main()
