"""Packs a train-drafter work folder's answers and self-written requests to carry to another machine, or
seeds a work folder with a pack (trainer/datapack.py). Packs live outside the repository (for example next
to the work folders under ~/.cache/eaglex/train): the repository holds source only.

    python scripts/work_data.py pack WORK_DIR PACK_DIR      # safe while the run is still writing
    python scripts/work_data.py pack --checkpoints WORK_DIR PACK_DIR   # and each run's latest checkpoint
    python scripts/work_data.py unpack PACK_DIR WORK_DIR    # keeps any file the work folder already has
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eaglex.train.datapack import pack, unpack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="pack: also each training run's latest checkpoint, AdamW moments in bf16 (98 MB for SmolLM2)",
    )
    args = parser.parse_args()
    if not args.source.is_dir():
        sys.exit(f"error: {args.source} is not a folder: pass a work folder to pack, or a pack to unpack")
    if args.action == "pack":
        pack(args.source, args.dest, checkpoints=args.checkpoints)
    else:
        unpack(args.source, args.dest)


if __name__ == "__main__":
    main()
