"""Where an export (or a quantized copy) is written: checked before anything is loaded, built in a hidden
`.NAME.PID.*.partial` folder beside it and renamed into place at the end, so the output exists only when
complete. A partial folder whose process is gone (an export killed with SIGKILL) is removed by the next
export to the same place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuses an output path that cannot become a folder, before minutes of loading and tracing."""
    if "\0" in str(out_dir):
        raise EaglexError("--out contains a NUL byte, which no path can hold: choose another output path")
    for part in out_dir.parts:
        if len(os.fsencode(part)) > 255:
            raise EaglexError(f"--out {out_dir}: the name {part[:20]}... is longer than 255 bytes")
    if out_dir.exists() and not out_dir.is_dir():
        raise EaglexError(f"{out_dir} exists and is not a folder: choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise EaglexError(f"{out_dir} already exists and is not empty: choose another folder or overwrite it")
    existing = out_dir.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EaglexError(f"--out {out_dir}: {existing} is a file, not a folder; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EaglexError(f"--out {out_dir}: {existing} is not writable; choose another output path")


def _pid(partial: Path, out_dir: Path) -> int | None:
    middle = partial.name.removeprefix(f".{out_dir.name}.").removesuffix(".partial")
    head = middle.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clear_stale(out_dir: Path, progress: Callable[[str], Any]) -> None:
    """Removes the partial folders of killed exports to out_dir; names those it cannot tell are stale."""
    if not out_dir.parent.is_dir():
        return
    for partial in sorted(out_dir.parent.glob(f".{out_dir.name}.*.partial")):
        pid = _pid(partial, out_dir)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(partial, ignore_errors=True)
            progress(f"removed {partial}, left by an export that was killed")
        elif pid is None:
            progress(f"note: {partial} is left from an earlier export; delete it if no export is running")


def make_work_dir(out_dir: Path) -> Path:
    """The hidden folder the output is built in; its name carries our pid so a later export can tell
    whether it is still being written."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial", dir=out_dir.parent)
        )
    except OSError as e:
        raise EaglexError(
            f"cannot create a folder in {out_dir.parent} ({e.strerror}): choose another --out"
        ) from None
    work.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared like any folder
    return work


def move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished folder to out_dir; an old out_dir (allowed by the caller) goes only after."""
    if not out_dir.exists():
        work.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
