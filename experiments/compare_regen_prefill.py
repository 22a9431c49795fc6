"""Answer regeneration with the prompts prefilled in pieces of a few rows against the whole batch at once:

    python experiments/compare_regen_prefill.py [--batches 3] [--batch 256] [--rows 256,16]
        [--max-new-tokens 160] [--threads 2]

Encodes every ShareGPT first-turn prompt (the trainer's prompt ids, up to the 864 tokens a 1024-token
sequence leaves beside 160 new ones) and sorts them by length, as the trainer does before it batches them;
takes `--batches` batches of `--batch` consecutive prompts, at evenly spaced quantiles of length (the
trainer's batches hold prompts of nearly one length); then answers each batch greedily with a bf16 copy of
SmolLM2 once per `--rows` setting (`greedy_answers`' `prefill_rows`), interleaved batch by batch. Prints
each setting's prefill and total seconds, generated tokens/s and how many answers equal the first
setting's (bf16 rounding depends on the matrix shapes, so a near-tie can flip). Only ratios within one run
mean anything on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import harness
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eaglex.exporter.fetch import fetch_smollm2
from eaglex.exporter.tokens import special_tokens
from eaglex.train.data import encode_prompt, first_turn, load_records, to_messages
from eaglex.train.decode import greedy_answers
from eaglex.train.regenerate import prompt_batches


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rows", default="256,16", help="prefill rows per model call, comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [int(r) for r in args.rows.split(",")]
    model_dir = fetch_smollm2(progress=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]

    conversations = [m for m in map(to_messages, load_records("sharegpt", lambda _: None)) if m is not None]
    encoded = (encode_prompt(tokenizer, first_turn(m)) for m in conversations)
    prompts = sorted((p for p in encoded if len(p) <= 1024 - args.max_new_tokens), key=len)
    batches = prompt_batches([len(p) for p in prompts], args.max_new_tokens, args.batch)
    chosen = [batches[(2 * k + 1) * len(batches) // (2 * args.batches)] for k in range(args.batches)]
    lengths = ", ".join(f"{len(prompts[b[0]])}-{len(prompts[b[-1]])}" for b in chosen)
    sizes = [len(b) for b in chosen]
    print(f"{len(prompts)} first-turn prompts; batches of {sizes} prompts of {lengths} tokens")

    totals = {rows: {"prefill": 0.0, "seconds": 0.0, "tokens": 0} for rows in settings}
    answers: dict[int, list[list[int]]] = {rows: [] for rows in settings}
    for batch in chosen:
        batch_prompts = [prompts[k] for k in batch]
        for rows in settings:
            started = time.perf_counter()
            greedy_answers(model, batch_prompts, stop_ids, 1, prefill_rows=rows)  # the prefill alone
            totals[rows]["prefill"] += time.perf_counter() - started
            started = time.perf_counter()
            out = greedy_answers(model, batch_prompts, stop_ids, args.max_new_tokens, prefill_rows=rows)
            totals[rows]["seconds"] += time.perf_counter() - started
            totals[rows]["tokens"] += sum(map(len, out))
            answers[rows] += out
        print(f"batch of {len(batch)} done", flush=True)
    first = answers[settings[0]]
    for rows, total in totals.items():
        same = sum(a == b for a, b in zip(first, answers[rows], strict=True))
        print(
            f"prefill {rows} rows at a time: prefill {total['prefill']:.1f} s, "
            f"answers {total['seconds']:.1f} s, "
            f"{total['tokens'] / total['seconds']:.1f} generated tokens/s; "
            f"answers equal to {settings[0]} rows': {same}/{len(first)}"
        )


if __name__ == "__main__":
    main()
