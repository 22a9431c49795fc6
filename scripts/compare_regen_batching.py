"""Regenerating answers: `generate` on whole batches against `greedy_answers`, where stopped rows leave.

    python scripts/compare_regen_batching.py --work-dir WORK [--first 384 --prompts 256] [--threads 2]
Takes `--prompts` recorded first-turn prompts of a work folder's regenerated.jsonl (bf16 answers, written
by `generate` in the trainer's batches of 64 before 2026-11-28 14:04 UTC), sorted by length as the trainer
batches them, and answers them again in bf16: with `generate` in batches of 64 (every row runs until the
batch's longest answer ends) and with `greedy_answers` in batches of 64 to 256, its stopped rows removed
at once or in bulk. Prints generated tokens/s, how many answers equal the recorded ones and, where they
differ, how often each answer's tokens are the fp32 target's greedy choice (bf16 rounding differs with
the batch shape, so a near-tie can flip).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from eaglex.exporter.fetch import fetch_smollm2
from eaglex.exporter.tokens import special_tokens
from eaglex.train.jsonl import peek_records
from eaglex.train.regenerate import greedy_answers


def generate_whole_batch(model, prompts: list[list[int]], stop_ids: list[int], max_new_tokens: int):
    """The trainer's earlier way: `generate` keeps every row until the longest answer ends."""
    pad = stop_ids[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad
    )
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    answers = []
    for row in out[:, width:].tolist():
        stops = [k for k, token in enumerate(row) if token in stop_ids]
        answers.append(row[: stops[0] + 1] if stops else row)
    return answers


def fp32_agreement(model, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Share of answer tokens that are the fp32 model's greedy choice after the prompt and answer so far."""
    agree = total = 0
    for prompt, answer in zip(prompts, answers, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
        choice = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        agree += sum(c == a for c, a in zip(choice, answer, strict=True))
        total += len(answer)
    return agree / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--first", type=int, default=384, help="index of the first recorded answer to take")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = peek_records(Path(args.work_dir) / "regenerated.jsonl")[args.first : args.first + args.prompts]
    records = sorted((r for r in records if r["turn"] == 1), key=lambda r: len(r["prompt"]))
    prompts, recorded = [r["prompt"] for r in records], [r["answer"] for r in records]
    model_dir = fetch_smollm2(progress=lambda _: None)
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(torch.bfloat16)
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]

    def evicting(share: float):
        return lambda *a: greedy_answers(*a, evict_share=share)

    ways = (
        ("generate, batch 64", generate_whole_batch, 64),
        ("greedy_answers, batch 64, rows leave at once", evicting(0.0), 64),
        ("greedy_answers, batch 128, rows leave at once", evicting(0.0), 128),
        ("greedy_answers, batch 128, rows leave once 1/8 have stopped", evicting(0.125), 128),
        ("greedy_answers, batch 256, rows leave once 1/8 have stopped", evicting(0.125), 256),
    )
    print(f"{len(prompts)} prompts of {args.work_dir}, {args.threads} threads, bf16 weights")
    for name, answer, batch in ways:
        started = time.perf_counter()
        answers = []
        for start in range(0, len(prompts), batch):
            answers += answer(bf16, prompts[start : start + batch], stop_ids, args.max_new_tokens)
        seconds = time.perf_counter() - started
        differ = [i for i, (a, r) in enumerate(zip(answers, recorded, strict=True)) if a != r]
        line = f"{name}: {sum(map(len, answers)) / seconds:.1f} generated tokens/s ({seconds:.1f} s), "
        line += f"{len(prompts) - len(differ)}/{len(prompts)} equal to the recorded answers"
        if differ:
            ours = fp32_agreement(fp32, [prompts[i] for i in differ], [answers[i] for i in differ])
            theirs = fp32_agreement(fp32, [prompts[i] for i in differ], [recorded[i] for i in differ])
            line += f"; where they differ, fp32 greedy agreement {ours:.2%} (recorded: {theirs:.2%})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
