"""Where a drafter loses acceptance: per MT-bench category and per set, next to the training distribution.

    python experiments/acceptance_breakdown.py ARTIFACT --drafter DRAFTER
        [--sets mt-bench=80,sharegpt-heldout=32] [--categories writing,roleplay]
For each group of prompts: mean prompt length, mean acceptance length (tokens per target pass, bonus
included) with a chain and with the default tree, how often the first draft is right, and the share of
the target's greedy answer tokens that the draft vocabulary lacks (a drafter can never propose those).
Same measurement as scripts/drafter_acceptance.py, whose prompt sets it reuses (one greedy continuation
per prompt, a tree per position).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import harness
import numpy as np
from safetensors.numpy import load_file

from eaglex.bench.datasets import Prompt, load_prompts, set_records
from eaglex.bench.tune import acceptance
from eaglex.runtime.engine import Engine

drafter_acceptance = harness.from_scripts("drafter_acceptance")
HELDOUT, TRACES = drafter_acceptance.HELDOUT, drafter_acceptance.TRACES
CHAIN, DEFAULT, FIRST = (1, 5, 6), (8, 5, 24), (1, 1, 2)


def groups(engine: Engine, sets: str, categories: set[str] | None) -> dict[str, list[Prompt]]:
    """Prompts by group: MT-bench by its own categories, every other set whole."""
    grouped: dict[str, list[Prompt]] = defaultdict(list)
    for spec in sets.split(","):
        name, limit = spec.split("=")
        if name == HELDOUT:
            grouped[name] = drafter_acceptance.heldout_prompts(engine, int(limit))
        elif name == "mt-bench":
            category = {str(r["question_id"]): r["category"] for r in set_records(name)}
            for prompt in load_prompts(name, int(limit)):
                grouped[f"mt-bench {category[prompt.id]}"].append(prompt)
        else:
            grouped[name] = load_prompts(name, int(limit))
    if categories:
        grouped = {g: p for g, p in grouped.items() if not g.startswith("mt-bench") or g[9:] in categories}
    return dict(grouped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--drafter", required=True, help="its folder (t2d: the draft vocabulary)")
    parser.add_argument("--sets", default="mt-bench=80,sharegpt-heldout=32")
    parser.add_argument("--categories", default=None, help="only these MT-bench categories (comma-separated)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--traces", type=Path, default=TRACES, help="the greedy-continuation cache drafter_acceptance.py uses"
    )
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=1)
    in_draft_vocab = load_file(f"{args.drafter}/model.safetensors")["t2d"].astype(bool)
    categories = set(args.categories.split(",")) if args.categories else None
    rows = []
    for group, prompts in groups(engine, args.sets, categories).items():
        answers: list[int] = []
        accepted = acceptance(
            engine,
            prompts,
            (1, 8),
            (2, 6, 24),
            args.max_new_tokens,
            lambda _: None,
            5,
            on_reference=answers.extend,
            traces=args.traces,
        )
        row = {
            "group": group,
            "prompts": len(prompts),
            "prompt_tokens": float(np.mean([len(engine.encode(p.text, p.chat)) for p in prompts])),
            "chain": 1 + accepted[CHAIN],
            "default_tree": 1 + accepted[DEFAULT],
            "first_draft_right": accepted[FIRST],
            "answer_tokens_outside_draft_vocab": float(1 - in_draft_vocab[np.array(answers)].mean()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| group | prompts | prompt tokens | chain (1,5,6) | default tree (8,5,24) | first draft right "
        "| answer tokens outside the draft vocabulary |"
    )
    print("|---" * 7 + "|")
    for r in rows:
        print(
            f"| {r['group']} | {r['prompts']} | {r['prompt_tokens']:.0f} | {r['chain']:.2f} | "
            f"{r['default_tree']:.2f} | {r['first_draft_right']:.1%} | "
            f"{r['answer_tokens_outside_draft_vocab']:.1%} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"artifact": args.artifact, "drafter": args.drafter, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
