"""Append-only JSONL caches that survive an interruption (regenerated answers, self-written prompts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[Any]:
    """The complete records of `path` (none if it does not exist). A last line cut off mid-write is removed
    from the file, so the next append starts a line of its own and the record is written again."""
    if not path.is_file():
        return []
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
    if kept_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(kept_bytes)
    return records
