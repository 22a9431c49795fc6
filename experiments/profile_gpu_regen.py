"""Where a GPU regeneration step goes: `greedy_answers` (train-drafter's answer writer) on SmolLM2-135M's
architecture with random bf16 weights, 256 rows of ragged prompts, each run twice (new shapes, then the
same shapes again), with torch's default attention backends and with cuDNN's attention left out; a bare
decode loop (equal prompts, no mask) for scale. Run on a GPU machine after prepare_gpu_train_check.py.

    python experiments/profile_gpu_regen.py [--profile]   # --profile: torch.profiler's top operators too
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from eaglex.train.decode import greedy_answers

ROWS, PROMPT, STEPS = 256, 200, 64


def timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def bare_decode(model, prompts: torch.Tensor) -> None:
    """Prefill and STEPS greedy steps: no attention mask (equal-length prompts), no stop handling."""
    cache = DynamicCache()
    with torch.no_grad():
        logits = model(input_ids=prompts, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        for _ in range(STEPS):
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    args = parser.parse_args()
    config = AutoConfig.from_pretrained(Path(".device/target"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    equal = torch.randint(100, 40000, (ROWS, PROMPT), device="cuda")
    ragged = [row[: PROMPT // 2 + i % PROMPT].tolist() for i, row in enumerate(equal)]
    stop = [0]  # random weights never pick it in 64 steps: every row runs every step
    bare_decode(model, equal[:8])  # warm-up
    no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    rows = {}
    settings = {"cuDNN attention off": no_cudnn, "default backends": [SDPBackend.CUDNN_ATTENTION, *no_cudnn]}
    for name, backends in settings.items():
        with sdpa_kernel(backends):
            for attempt in ("first pass", "same shapes again"):
                seconds = timed(lambda: greedy_answers(model, ragged, stop, STEPS))
                rows[f"ragged prompts, {name}, {attempt}"] = seconds
            rows[f"bare loop, equal prompts, {name}"] = timed(lambda: bare_decode(model, equal))
    print(f"{torch.cuda.get_device_name()}, {ROWS} rows, {STEPS} new tokens, bf16 weights")
    for name, seconds in rows.items():
        print(f"  {name:<56} {1000 * seconds / STEPS:6.1f} ms/step  {ROWS * STEPS / seconds:7.0f} tokens/s")
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            greedy_answers(model, ragged, stop, 16)
        print(profile.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=48))
        print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=48))


if __name__ == "__main__":
    main()
