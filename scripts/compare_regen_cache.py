"""Regenerating answers with a KV cache reserved up front against one grown by concatenation.

    python scripts/compare_regen_cache.py --work-dir WORK [--turn 2 --prompts 64 --batch 64] [--threads 2]
Takes `--prompts` recorded prompts of turn `--turn` from a work folder's regenerated.jsonl, evenly spaced
over their lengths (later turns reread their whole context), sorted by length as the trainer batches them,
and answers them in bf16 with `greedy_answers` twice, interleaved batch by batch: with its ReservedLayer
cache (written in place; stopped rows replaced by moving live ones) and with transformers' DynamicLayer
(torch.cat at every step; stopped rows dropped by indexing), the trainer's cache until 2026-11-28. Prints
generated tokens/s, minor page faults and CPU time in the kernel for each, and whether the answers match.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicLayer

from eaglex.exporter.fetch import fetch_smollm2
from eaglex.exporter.tokens import special_tokens
from eaglex.train import regenerate
from eaglex.train.jsonl import peek_records


class ConcatenatedLayer(DynamicLayer):
    """transformers' growing cache, with ReservedLayer's calls for prefill pieces and row removal."""

    def __init__(self, rows: int, capacity: int) -> None:
        super().__init__()

    def write_rows(self, first: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys = key_states if first == 0 else torch.cat([self.keys, key_states])
        self.values = value_states if first == 0 else torch.cat([self.values, value_states])
        self.device, self.is_initialized = key_states.device, True

    def keep_rows(self, order: list[int]) -> None:
        self.batch_select_indices(torch.tensor(order, device=self.keys.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--turn", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = peek_records(Path(args.work_dir) / "regenerated.jsonl")
    # Evenly spaced over the turn's prompts by length, so the mix of short and long is the run's.
    turn = sorted((r["prompt"] for r in records if r.get("turn", 1) == args.turn), key=len)
    prompts = [turn[k * len(turn) // args.prompts] for k in range(min(args.prompts, len(turn)))]
    model_dir = fetch_smollm2(progress=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]
    layers = {"reserved (in place)": regenerate.ReservedLayer, "concatenated (torch.cat)": ConcatenatedLayer}
    totals = {name: {"seconds": 0.0, "tokens": 0, "faults": 0, "system": 0.0} for name in layers}
    answers: dict[str, list[list[int]]] = {name: [] for name in layers}
    mean = sum(map(len, prompts)) / len(prompts)
    print(f"{len(prompts)} turn-{args.turn} prompts of {mean:.0f} tokens on average, batches of {args.batch}")
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start : start + args.batch]
        for name, layer in layers.items():
            regenerate.ReservedLayer = layer  # what greedy_answers builds its cache from
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            out = regenerate.greedy_answers(model, batch, stop_ids, args.max_new_tokens)
            after = resource.getrusage(resource.RUSAGE_SELF)
            total = totals[name]
            total["seconds"] += time.perf_counter() - started
            total["tokens"] += sum(map(len, out))
            total["faults"] += after.ru_minflt - before.ru_minflt
            total["system"] += after.ru_stime - before.ru_stime
            answers[name] += out
    for name, total in totals.items():
        seconds = total["seconds"]
        print(
            f"{name}: {total['tokens'] / seconds:.1f} generated tokens/s ({seconds:.1f} s), "
            f"{total['faults'] / seconds:.0f} minor page faults/s, "
            f"{total['system']:.1f} s of CPU time in the kernel"
        )
    first, second = answers.values()
    same = sum(a == b for a, b in zip(first, second, strict=True))
    print(f"answers equal: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
