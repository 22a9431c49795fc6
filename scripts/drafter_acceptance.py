"""Acceptance of an artifact's drafter on the benchmark prompts, for several tree shapes at once.

Greedy verification accepts the longest prefix of the target's greedy continuation that lies on a tree path,
so one greedy continuation per prompt and one tree grown per position give the exact acceptance of every
smaller tree shape (eaglex/bench/tune.py `acceptance`), without decoding once per shape. The continuations
and the target's features along them are cached (--traces), so scoring another drafter for the same target
costs only the drafter's calls:
    python scripts/drafter_acceptance.py ARTIFACT [--limits mt-bench=80,humaneval=20,gsm8k=20]
Prints a markdown table of mean acceptance length (tokens per target pass, bonus included) per set.
The set `sharegpt-heldout` is the first turns of the conversations the drafter trainer holds out for
validation (`--val-samples`, seed 0): prompts from the training distribution that no drafter of
scripts/train_smollm2_drafter.sh trained on, to tell a weak drafter from a shift between the training
prompts and a benchmark's. The set `self-written` is requests the target (--model) writes itself, as
`train-drafter --self-prompts` makes them, but from seed 1 where training uses its --seed (0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from eaglex.bench.datasets import Prompt, evaluation_texts, load_prompts
from eaglex.bench.tune import acceptance
from eaglex.cli import resolve_model
from eaglex.runtime.engine import Engine
from eaglex.train.data import EvalFilter
from eaglex.train.pipeline import select_conversations
from eaglex.train.selfprompts import write_requests

# (top_k, depth, total_tokens): a chain, two CPU-sized trees, the default, and the GPU-sized tree of EAGLE-3.
SHAPES = ((1, 5, 6), (4, 3, 8), (4, 4, 12), (8, 5, 24), (8, 6, 60))
HELDOUT = "sharegpt-heldout"
SELF_WRITTEN = "self-written"
TRACES = Path.home() / ".cache" / "eaglex" / "traces"


def heldout_prompts(engine: Engine, count: int, max_prompt_tokens: int = 1024 - 160) -> list[Prompt]:
    """The trainer's held-out conversations as first-turn prompts: with its default --seed 0 they come first
    in its shuffled order, skipping any whose first prompt leaves no room for an answer (the shipped
    drafter's --max-length 1024 and --max-new-tokens 160)."""
    exclude = EvalFilter(evaluation_texts(lambda _: None))  # what `eaglex train-drafter` drops
    conversations = select_conversations(("sharegpt",), 0, 0, exclude, lambda _: None)
    prompts = []
    for i, messages in enumerate(conversations):
        text = next(m["content"] for m in messages if m["role"] == "user")
        if len(engine.encode(text, chat=True)) <= max_prompt_tokens:
            prompts.append(Prompt(HELDOUT, str(i), text))
        if len(prompts) == count:
            return prompts
    return prompts


def self_written_prompts(model: str, count: int, seed: int = 1) -> list[Prompt]:
    """`count` requests written by the target in bf16 (as run 8 on writes its answers), none of them an
    evaluation prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eaglex.exporter.tokens import special_tokens

    model_dir = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]
    exclude = EvalFilter(evaluation_texts(lambda _: None))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "requests.jsonl"
        conversations = write_requests(writer, tokenizer, count, cache, seed, stop_ids, 64, exclude, print)
    return [Prompt(SELF_WRITTEN, str(i), c[0]["content"]) for i, c in enumerate(conversations)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--limits", default="mt-bench=80,humaneval=20,gsm8k=20")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--model", default="smollm2", help=f"the target that writes the {SELF_WRITTEN} set")
    parser.add_argument(
        "--traces",
        type=Path,
        default=TRACES,
        help="caches each prompt's greedy continuation and the target's features here, keyed by the "
        "target's files: the next drafter for the same target skips the target's work",
    )
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    top_ks = tuple(sorted({k for k, _, _ in SHAPES}))
    sizes = tuple(sorted({t for _, _, t in SHAPES}))
    depth = max(d for _, d, _ in SHAPES)
    results = {}
    started = time.perf_counter()
    for spec in args.limits.split(","):
        name, limit = spec.split("=")
        if name == HELDOUT:
            prompts = heldout_prompts(engine, int(limit))
        elif name == SELF_WRITTEN:
            prompts = self_written_prompts(args.model, int(limit))
        else:
            prompts = load_prompts(name, int(limit))

        def progress(line: str, name: str = name) -> None:
            print(f"[{time.perf_counter() - started:6.0f}s] {name}: {line}", flush=True)

        accepted = acceptance(
            engine, prompts, top_ks, sizes, args.max_new_tokens, progress, depth, traces=args.traces
        )
        results[name] = {f"{k}/{d}/{t}": 1 + accepted[k, d, t] for k, d, t in SHAPES}
    print("\n| set | " + " | ".join(f"top_k {k}, depth {d}, {t} nodes" for k, d, t in SHAPES) + " |")
    print("|---" * (len(SHAPES) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    if args.out:
        with open(args.out, "w") as f:
            record = {"artifact": args.artifact, "max_new_tokens": args.max_new_tokens, **results}
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
