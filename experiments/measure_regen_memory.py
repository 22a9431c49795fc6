"""Peak memory of one answer-regeneration batch of the longest prompts the trainer writes:

    python experiments/measure_regen_memory.py [--prompt-tokens 864] [--max-new-tokens 160] [--threads 2]

Builds the batch the trainer would for prompts of `--prompt-tokens` (as many rows as BATCH_TOKENS of KV
cache holds: 128 at 864 + 160), of random token ids, and answers it greedily with a bf16 copy of SmolLM2
(`greedy_answers`), as one regeneration worker does at the end of a turn. Prints the process's peak
resident memory (ru_maxrss) after loading the model and after the batch, and the batch's KV cache in bf16
for scale. Run it in a process of its own: the peak only grows.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import harness
import torch
from transformers import AutoModelForCausalLM

from eaglex.exporter.fetch import fetch_smollm2
from eaglex.exporter.tokens import special_tokens
from eaglex.train.decode import greedy_answers
from eaglex.train.regenerate import BATCH_TOKENS


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--prompt-tokens", type=int, default=864)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = fetch_smollm2(progress=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]
    rows = BATCH_TOKENS // (args.prompt_tokens + args.max_new_tokens)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (rows, args.prompt_tokens), generator=generator)
    config = model.config
    kv_values = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    cache_gb = rows * (args.prompt_tokens + args.max_new_tokens) * kv_values * 2 / 2**30
    loaded = peak_gb()
    started = time.perf_counter()
    answers = greedy_answers(model, prompts.tolist(), stop_ids, args.max_new_tokens)
    seconds = time.perf_counter() - started
    print(
        f"{rows} prompts of {args.prompt_tokens} tokens, {sum(map(len, answers))} tokens answered in "
        f"{seconds:.1f} s; KV cache {cache_gb:.2f} GB; peak resident memory {loaded:.2f} GB with the model "
        f"loaded, {peak_gb():.2f} GB after the batch"
    )


if __name__ == "__main__":
    main()
