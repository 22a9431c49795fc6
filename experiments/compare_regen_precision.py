"""Answer regeneration in fp32 against bf16 weights, interleaved batch by batch:

    python experiments/compare_regen_precision.py --work-dir WORK [--model smollm2] [--prompts 128]
        [--batch-size 64] [--max-new-tokens 160] [--threads 2] [--seed 0]

Takes prompts at random from WORK's regenerated.jsonl (a train-drafter work folder), answers each batch
greedily with the target in fp32 and with a bf16 copy of it, and prints each precision's generated tokens/s
and how far the bf16 answers agree with the fp32 ones (whole answers equal; mean share of the answer before
the first differing token; share of bf16 answer tokens that the fp32 target, reading the bf16 answer so
far, would have chosen itself). Only the ratio in one run means anything on a shared machine.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from statistics import mean

import harness
import torch

from eaglex.cli import resolve_model
from eaglex.exporter.tokens import special_tokens
from eaglex.train.decode import greedy_answers
from eaglex.train.jsonl import peek_records


def teacher_agreement(model, prompts: list[list[int]], answers: list[list[int]]) -> tuple[int, int]:
    """Answer tokens that are `model`'s own greedy choice given everything before them, and all answer
    tokens: how far another precision's answers stay on the path this model would have taken."""
    agree = total = 0
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers, strict=True):
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
            agree += int((logits.argmax(-1) == torch.tensor(answer)).sum())
            total += len(answer)
    return agree, total


def agreed_share(reference: list[int], other: list[int]) -> float:
    """Share of `reference` before the first token where `other` differs."""
    same = 0
    for a, b in zip(reference, other, strict=False):
        if a != b:
            break
        same += 1
    return same / len(reference)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(args.model)
    models = {"fp32": AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()}
    models["bf16"] = copy.deepcopy(models["fp32"]).to(torch.bfloat16)
    stop_ids = list(special_tokens(model_dir)["eos_token_ids"])
    records = peek_records(args.work_dir / "regenerated.jsonl")
    chosen = sorted(random.Random(args.seed).sample(records, args.prompts), key=lambda r: len(r["prompt"]))
    prompts = [r["prompt"] for r in chosen]  # sorted by length as the pipeline batches them
    seconds = dict.fromkeys(models, 0.0)
    tokens = dict.fromkeys(models, 0)
    answers: dict[str, list[list[int]]] = {name: [] for name in models}
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        for name, model in models.items():
            started = time.perf_counter()
            out = greedy_answers(model, batch, stop_ids, args.max_new_tokens)
            seconds[name] += time.perf_counter() - started
            tokens[name] += sum(len(a) for a in out)
            answers[name] += out
        rates = ", ".join(f"{n} {tokens[n] / seconds[n]:.1f} tokens/s" for n in models)
        print(f"{start + len(batch)}/{len(prompts)} prompts: {rates}", flush=True)
    pairs = list(zip(answers["fp32"], answers["bf16"], strict=True))
    equal = sum(a == b for a, b in pairs)
    shares = [agreed_share(a, b) for a, b in pairs]
    rate = {name: tokens[name] / seconds[name] for name in models}
    print(f"bf16 / fp32 generated tokens/s: {rate['bf16'] / rate['fp32']:.2f}x")
    print(f"answers equal: {equal}/{len(pairs)}; mean share before the first difference: {mean(shares):.3f}")
    agree, total = teacher_agreement(models["fp32"], prompts, answers["bf16"])
    print(f"bf16 answer tokens that are the fp32 target's own greedy choice: {agree / total:.4f}")
    # The pipeline batched these prompts with others: padding alone can flip a near-tie in fp32 too.
    cached = sum(r["answer"] == a for r, a in zip(chosen, answers["fp32"], strict=True))
    print(f"fp32 answers equal to the work folder's: {cached}/{len(chosen)}")


if __name__ == "__main__":
    main()
