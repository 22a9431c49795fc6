"""A work folder's costly but small data, packed to commit beside the drafter and unpacked into a new folder.

What takes hours to make and little room to keep is the target's own writing: its self-written requests
(self_prompts.jsonl) and its regenerated answers (regenerated.jsonl), all token ids; with hours.json, what
they cost. Features (GBs) are remade from them. Machine caches do not outlive a machine here (a drafter, its
answers and its features were lost with one; docs/TRAINING.md), so a run that spans sessions commits its
pack: the next machine unpacks it and resumes where the last one stopped.

With `checkpoints=True` a pack also carries each training run's latest checkpoint (`run-*/checkpoint`), its
AdamW moments rounded to bf16: 8 bytes a parameter instead of 12 (98 MB for SmolLM2's drafter), from which a
run with live features (`--live-features`) resumes on any machine. Weights stay fp32: late updates are
~1e-4 of a weight, below bf16's resolution; the moments only scale updates, and loading casts them back.

xz of the JSON lines (~1.5 bytes a token; binary token ids packed only ~13% smaller) keeps the files readable
with the usual tools: `xz -dc regenerated.jsonl.xz | head`.
"""

from __future__ import annotations

import json
import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import TRAINER_STATE, read_trainer_state
from .jsonl import peek_records, worker_files

CACHES = ("self_prompts.jsonl", "regenerated.jsonl")  # appended as they grow; only complete lines are packed
COST = "hours.json"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "training.json")
RUN_LOG = "train_log.jsonl"


def pack(
    work_dir: Path, dest: Path, report: Callable[[str], None] = print, checkpoints: bool = False
) -> None:
    """Writes each cache of work_dir that exists (with its workers' files), as dest/NAME.xz, and its
    hours.json; safe while a run is still appending to them (a line being written is left out). With
    checkpoints, also each run's latest checkpoint (AdamW moments in bf16) and its log."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in CACHES:
        # With --regenerate-workers, a turn's answers wait in one file per worker until the turn ends.
        paths = (work_dir / name, *worker_files(work_dir / name))
        records = [r for path in paths for r in peek_records(path)]
        if not records:
            continue
        text = "".join(json.dumps(record) + "\n" for record in records).encode()
        _write_atomically(dest / f"{name}.xz", lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))
        report(f"packed {len(records)} records of {name} ({len(text) / 1e6:.1f} MB) into {dest / name}.xz")
    if (work_dir / COST).is_file():
        _write_atomically(dest / COST, (work_dir / COST).read_bytes())
    for run in sorted(work_dir.glob("run-*")) if checkpoints else []:
        _pack_checkpoint(run, dest / run.name, report)


def _pack_checkpoint(run: Path, dest: Path, report: Callable[[str], None]) -> None:
    state = read_trainer_state(run / "checkpoint")  # the trainer keeps it whole in one of two folders
    if state is None:
        return
    folder = Path(state.pop("folder"))
    for moments in state["optimizer"]["state"].values():
        for name in ("exp_avg", "exp_avg_sq"):
            moments[name] = moments[name].to(torch.bfloat16)
    staged = dest / "checkpoint.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, staged / name)
    torch.save(state, staged / TRAINER_STATE)
    shutil.rmtree(dest / "checkpoint", ignore_errors=True)
    staged.rename(dest / "checkpoint")
    if (run / RUN_LOG).is_file():
        _write_atomically(dest / RUN_LOG, (run / RUN_LOG).read_bytes())
    report(f"packed {run.name}'s checkpoint at optimizer step {state['step']} into {dest / 'checkpoint'}")


def unpack(src: Path, work_dir: Path, report: Callable[[str], None] = print) -> None:
    """Seeds work_dir with src's caches and hours.json. A file work_dir already has is kept (its run goes on
    from there), so unpacking again, or into a folder a run has grown past the pack, changes nothing."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for name in (*CACHES, COST):
        packed = src / (f"{name}.xz" if name in CACHES else name)
        if not packed.is_file():
            continue
        target = work_dir / name
        if target.exists():
            report(f"kept {target}: it is already there")
            continue
        data = lzma.decompress(packed.read_bytes()) if name in CACHES else packed.read_bytes()
        _write_atomically(target, data)
        report(f"unpacked {packed} into {target}")
    for run in sorted(src.glob("run-*")):
        target = work_dir / run.name
        if (target / "checkpoint").exists() or (target / "checkpoint.old").exists():
            report(f"kept {target / 'checkpoint'}: the run already has one")
            continue
        staged = target / "checkpoint.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(run / "checkpoint", staged)
        if (run / RUN_LOG).is_file():
            _write_atomically(target / RUN_LOG, (run / RUN_LOG).read_bytes())
        staged.rename(target / "checkpoint")
        report(f"unpacked {run / 'checkpoint'} into {target / 'checkpoint'}")


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)  # a stop mid-write leaves the old file or none, never half of one
