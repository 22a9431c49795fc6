"""Wall-clock ms per target pass with every session alone in its process: interleaving two sessions in one
process lets one's spinning threads slow the other (experiments/profile_passes.py interleaves; use it with
--threads 1). Alternate the two commands a few times and compare medians taken in the same minute.

    python experiments/pass_alone.py eaglex ARTIFACT [--threads 2]
    python experiments/pass_alone.py genai GENAI_MODEL_DIR [--threads 2]   # genai's graph, eaglex's session
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from profile_passes import calls, genai_calls

from eaglex.runtime.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("eaglex", "genai"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,4")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.kind == "genai":
        timed, _ = genai_calls(args.path, rows, args.context, args.threads)
    else:
        engine = Engine.load(args.path, threads=args.threads, checksums=False)
        timed = {k: v for k, v in calls(engine, rows, args.context).items() if k.startswith("target")}
    for name, call in timed.items():
        for _ in range(5):
            call()
        seconds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        print(f"{args.kind} {name}: {1000 * statistics.median(seconds):.2f} ms")


if __name__ == "__main__":
    main()
