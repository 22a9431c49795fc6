"""Answers written by the target itself: greedy decoding of first-turn prompts, batched, cached as token ids.

A drafter is judged by how often it guesses the target's own greedy tokens, so training on the target's
answers (as EAGLE does) teaches exactly that, where a dataset's answers (ChatGPT's, for ShareGPT) teach
another model's style. Token ids are kept as generated, not re-tokenized from text, because at run time the
drafter reads the ids the target produced. Results are appended to a JSONL file as batches finish, so an
interrupted run resumes where it stopped. Each answer records the dtype that wrote it; a cached answer is
reused for the same prompt whatever its dtype (a grown data set keeps its earlier answers).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import Message, Sample, encode_prompt
from .progress import Progress


def _read_cache(path: Path) -> dict[int, dict[str, list[int]]]:
    done: dict[int, dict[str, list[int]]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut off by an interruption: redo it
            done[record["index"]] = record
    return done


def regenerate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[Message]],
    cache_file: Path,
    max_new_tokens: int,
    max_prompt_tokens: int,
    stop_ids: Sequence[int],
    batch_size: int,
    report: Callable[[str], None],
) -> list[Sample | None]:
    """Greedy answers to `prompts` (chat messages ending with a user turn) as samples whose loss mask
    covers the answer, stop token included. Prompts longer than max_prompt_tokens give None."""
    from transformers import GenerationConfig

    encoded = [encode_prompt(tokenizer, messages) for messages in prompts]
    # An answer counts only for the very prompt it was generated for.
    done = {
        i: r for i, r in _read_cache(cache_file).items() if i < len(encoded) and r["prompt"] == encoded[i]
    }
    todo = [i for i, ids in enumerate(encoded) if i not in done and len(ids) <= max_prompt_tokens]
    todo.sort(key=lambda i: len(encoded[i]))  # similar lengths together: less padding
    pad = stop_ids[0]
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(stop_ids), pad_token_id=pad
    )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    progress = Progress(f"regenerate answers ({dtype})", len(todo), report, unit="answers")
    generated_tokens = 0
    with open(cache_file, "a") as cache:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            # Left padding, so every prompt ends where generation starts.
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch])
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation)
            for row, i in enumerate(batch):
                answer = out[row, width:].tolist()
                stops = [k for k, token in enumerate(answer) if token in stop_ids]
                answer = answer[: stops[0] + 1] if stops else answer
                generated_tokens += len(answer)
                done[i] = {"index": i, "prompt": encoded[i], "answer": answer, "dtype": dtype}
                cache.write(json.dumps(done[i]) + "\n")
            cache.flush()
            seconds = time.perf_counter() - progress.started
            progress.update(len(batch), f"{generated_tokens / seconds:.1f} generated tokens/s")
    if todo:
        report(progress.line("done"))
    # Answers cached before dtypes were recorded were all written in float32.
    writers = Counter(record.get("dtype", "float32") for record in done.values())
    report("answers by weight dtype: " + ", ".join(f"{n} {d}" for d, n in sorted(writers.items())))
    samples: list[Sample | None] = []
    for i in range(len(prompts)):
        if i not in done:
            samples.append(None)
            continue
        prompt, answer = done[i]["prompt"], done[i]["answer"]
        samples.append(Sample(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
    return samples
