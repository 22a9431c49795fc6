"""Append-only JSONL caches that survive an interruption (regenerated answers, self-written prompts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _complete_records(path: Path) -> tuple[list[Any], int]:
    """The records of `path` up to its first line cut off or not JSON, and how many bytes they take."""
    records, kept_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # cut off before its newline, even if its JSON happens to be whole
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            kept_bytes += len(line)
    return records, kept_bytes


def peek_records(path: Path) -> list[Any]:
    """The complete records of `path`, leaving the file as it is: safe on a file a running job appends to."""
    return _complete_records(path)[0] if path.is_file() else []


def read_records(path: Path) -> list[Any]:
    """The complete records of `path` (none if it does not exist), for the job that appends to it. A last line
    cut off mid-write is removed from the file, so the next append starts a line of its own and the record is
    written again."""
    if not path.is_file():
        return []
    records, kept_bytes = _complete_records(path)
    if kept_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(kept_bytes)
    return records


def worker_files(path: Path) -> list[Path]:
    """The files that processes writing in parallel append to until their records are merged into `path`."""
    return sorted(path.parent.glob(path.name + ".worker*"))
