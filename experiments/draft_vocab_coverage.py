"""How much of the target's answers a frequency draft vocabulary of each size covers, per benchmark set.

    python experiments/draft_vocab_coverage.py ARTIFACT --work-dir WORK [--sizes 8192,12288,16384]
        [--sets mt-bench=80,humaneval=20,gsm8k=20] [--drafter DRAFTER]
Ranks tokens by how often they occur in the answers of a training work folder (regenerated.jsonl: the
target's own answers, which `--draft-vocab-size` counts), decodes each set's prompts greedily with the
artifact's target (128 new tokens, chat template) and prints, per set and size, the share of those answer
tokens that the vocabulary of the most frequent tokens holds; with `--drafter`, also that drafter's own
vocabulary (its t2d mask). A token outside the draft vocabulary can never be drafted.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.train.jsonl import peek_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--sizes", default="8192,12288,16384")
    parser.add_argument("--sets", default="mt-bench=80,humaneval=20,gsm8k=20")
    parser.add_argument("--drafter", default=None, help="also this drafter's own vocabulary")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    counts: Counter[int] = Counter()
    records = peek_records(Path(args.work_dir) / "regenerated.jsonl")
    for record in records:
        counts.update(record["answer"])
    answers = len(records)
    ranked = np.array([token for token, _ in counts.most_common()])
    print(f"ranked by {sum(counts.values()):,} tokens of {answers:,} answers, {len(ranked):,} distinct")
    engine = Engine.load(args.artifact, threads=1)
    vocabularies = {}
    for size in map(int, args.sizes.split(",")):
        vocabularies[f"top {size:,}"] = ranked[:size]
    if args.drafter:
        t2d = load_file(f"{args.drafter}/model.safetensors")["t2d"].astype(bool)
        vocabularies["drafter's"] = np.flatnonzero(t2d)
    print("| set | answer tokens | " + " | ".join(vocabularies) + " |")
    print("|---" * (len(vocabularies) + 2) + "|")
    for spec in args.sets.split(","):
        name, limit = spec.split("=")
        config = engine.default_config(max_new_tokens=args.max_new_tokens, speculative=False)
        tokens = np.array(
            [
                t
                for prompt in load_prompts(name, int(limit))
                for chunk in engine.generate(engine.encode(prompt.text, prompt.chat), config)
                for t in chunk
            ]
        )
        shares = [f"{np.isin(tokens, members).mean():.1%}" for members in vocabularies.values()]
        print(f"| {name} | {len(tokens):,} | " + " | ".join(shares) + " |", flush=True)


if __name__ == "__main__":
    main()
