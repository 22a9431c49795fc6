"""Serving trees per batch size, checked by decoding: aggregate tok/s of b concurrent greedy requests.

For each batch size b, b chat prompts decode together on the batch engine (runtime/scheduler.py) with:
  - "tuned": the artifact's `tree.by_batch` table (eaglex tune --batch-sizes);
  - "batch-1 tree": the table's first tree at every batch size (cut to the rows per pass, as before);
  - "plain": plain decoding at every batch size;
  - with --table-of OTHER: OTHER's table (an earlier tune of the same graphs, say);
interleaved in rotating order (experiments/harness.py). Aggregate tok/s = new tokens of all b requests over
the wall time from submitting them to the last one finishing (prefill included, the same for each). Every
candidate's outputs must be the same tokens (greedy is lossless), which the script checks.

    python experiments/serve_trees_ab.py ARTIFACT --batch-sizes 1,2,4,8 --new-tokens 64 --reps 3 \
        [--table-of OTHER_ARTIFACT]
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import harness

from eaglex.runtime.engine import Engine
from eaglex.runtime.manifest import BatchTree, load
from eaglex.runtime.scheduler import BatchEngine


def decode_together(engine: Engine, table: tuple[BatchTree, ...], prompts: list[list[int]], args) -> tuple:
    """(tokens per second of all requests, their outputs) with this tree table."""
    engine.manifest = dataclasses.replace(
        engine.manifest, tree=dataclasses.replace(engine.manifest.tree, by_batch=table)
    )
    batch = BatchEngine(engine, max_batch=len(prompts), rows_per_pass=args.rows_per_pass)
    outputs: list[list[int]] = [[] for _ in prompts]
    config = engine.default_config(max_new_tokens=args.new_tokens)

    def one(i: int) -> None:
        outputs[i] = [t for chunk in batch.generate(prompts[i], config) for t in chunk]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    batch.close()
    return sum(map(len, outputs)) / seconds, outputs


def main() -> None:
    parser = harness.parser(__doc__, artifact=True, reps=3)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rows-per-pass", type=int, default=64)
    parser.add_argument("--table-of", type=Path, help="also another artifact's table (an older tune's)")
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    tuned = engine.manifest.tree.by_batch
    if not tuned:
        raise SystemExit(f"{args.artifact} has no tree.by_batch table: run eaglex tune --batch-sizes first")
    tables = {
        "tuned": tuned,
        "batch-1 tree": (dataclasses.replace(tuned[0], batch=1),),
        "plain": (BatchTree(batch=1, speculative=False, top_k=1, depth=1, total_tokens=1),),
    }
    if args.table_of:
        tables[f"{args.table_of.name}'s table"] = load(args.table_of, checksums=False).tree.by_batch
    texts = harness.chat_prompts()
    print(harness.machine(args.threads))
    for b in map(int, args.batch_sizes.split(",")):
        prompts = [engine.encode(texts[i % len(texts)], chat=True) for i in range(b)]
        outputs: dict[str, list] = {}

        def candidate(name: str, prompts=prompts, outputs=outputs):
            def run() -> float:
                rate, outputs[name] = decode_together(engine, tables[name], prompts, args)
                return rate

            return run

        values = harness.interleaved({name: candidate(name) for name in tables}, args.reps)
        same = all(o == outputs["plain"] for o in outputs.values())
        print(f"\nbatch {b} ({b * args.new_tokens} tokens at most; outputs identical: {same})")
        print(harness.table(values, "plain", "tok/s"))


if __name__ == "__main__":
    main()
