"""Answers written by the target itself: greedy decoding of each conversation's user turns, batched, cached as
token ids.

A drafter is judged by how often it guesses the target's own greedy tokens, so training on the target's
answers (as EAGLE does) teaches exactly that, where a dataset's answers (ChatGPT's, for ShareGPT) teach
another model's style. Token ids are kept as generated, not re-tokenized from text, because at run time the
drafter reads the ids the target produced.

Turn k > 1 is answered with the target's own earlier answers in context: its prompt is turn k-1's prompt,
that answer's ids, and the chat template's text between that answer and the next generation prompt. The
turns run in rounds (all first turns, then all second turns, ...), each batched by prompt length.

Results are appended to a JSONL file as batches finish, so an interrupted run resumes where it stopped.
Each answer records its turn and the dtype that wrote it; a cached answer is reused for the same prompt
whatever its dtype (a grown data set keeps its earlier answers).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eaglex.errors import EaglexError

from .data import Message, Sample, encode_prompt, first_turn, render
from .decode import greedy_answers
from .jsonl import read_records, worker_files
from .progress import Progress

# Tokens of KV cache per regeneration batch, in each worker process: 3 GB in bf16 for SmolLM2 (30 layers x 2 x
# 192 values); a batch of its longest prompts peaks at 4.6 GB a process (experiments/measure_regen_memory.py).
BATCH_TOKENS = 131_072
Record = dict[str, Any]  # {"index", "turn", "prompt": ids, "answer": ids, "dtype"}


def _read_cache(path: Path) -> dict[tuple[int, int], Record]:
    # Files written before turns existed held first turns only.
    return {(record["index"], record.get("turn", 1)): record for record in read_records(path)}


def next_prompt(
    tokenizer: Any, messages: list[Message], records: list[Record], stop_ids: Sequence[int]
) -> list[int] | None:
    """The prompt of user turn len(records) + 1 of `messages`, given the records of the turns before it:
    the last record's prompt and answer ids, then the template's text up to the next generation prompt.
    None when the conversation has no such turn, or its template does not render the earlier answers
    verbatim (the ids could not be continued)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(users) <= len(records):
        return None
    last = records[-1]
    answer = last["answer"]
    # An answer's text as the template holds it: without the end-of-turn token it stopped at.
    texts = [
        tokenizer.decode(r["answer"][:-1] if r["answer"][-1] in stop_ids else r["answer"]) for r in records
    ]
    rewritten = [dict(m) for m in messages[: users[len(records)] + 1]]
    for text, user in zip(texts, users, strict=False):
        rewritten[user + 1]["content"] = text  # the answer after each earlier user turn
    before = render(tokenizer, rewritten[: users[len(records) - 1] + 1], True) + texts[-1]
    full = render(tokenizer, rewritten, True)
    if not full.startswith(before):
        return None
    glue = tokenizer(full[len(before) :], add_special_tokens=False)["input_ids"]
    if answer[-1] in stop_ids:
        # The answer already ends with the end-of-turn token the template writes next.
        if not glue or glue[0] != answer[-1]:
            return None
        glue = glue[1:]
    return last["prompt"] + answer + glue


def prompt_batches(lengths: Sequence[int], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Consecutive runs of up to batch_size prompts (given in length order) whose KV cache, rows x (longest
    prompt + max_new_tokens), stays within BATCH_TOKENS: long prompts come in smaller batches."""
    batches: list[list[int]] = []
    for k, length in enumerate(lengths):
        rows = len(batches[-1]) + 1 if batches else batch_size + 1
        if rows <= batch_size and rows * (length + max_new_tokens) <= BATCH_TOKENS:
            batches[-1].append(k)
        else:
            batches.append([k])
    return batches


@dataclass(frozen=True)
class _AnswerJob:
    """One turn's prompts (by conversation index) and how to answer them."""

    prompts: dict[int, list[int]]
    turn: int
    max_new_tokens: int
    stop_ids: list[int]

    def run(
        self, model: nn.Module, batches: list[list[int]], out: Path, progress: Progress | None
    ) -> list[Record]:
        """Answers `batches` (lists of conversation indices), appending each batch's records to `out` as it
        finishes, so a stop loses at most the batch under way."""
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        records: list[Record] = []
        with open(out, "a") as f:
            for batch in batches:
                answers = greedy_answers(
                    model, [self.prompts[i] for i in batch], self.stop_ids, self.max_new_tokens
                )
                for i, answer in zip(batch, answers, strict=True):
                    record = {
                        "index": i,
                        "turn": self.turn,
                        "prompt": self.prompts[i],
                        "answer": answer,
                        "dtype": dtype,
                    }
                    f.write(json.dumps(record) + "\n")
                    records.append(record)
                f.flush()
                if progress is not None:
                    progress.update(len(batch))
        return records


def _merge_worker_files(cache_file: Path) -> list[Record]:
    """Appends the complete records of the workers' files to cache_file, then removes those files. A stop
    between the two leaves records in both, which is harmless: a record is found by its turn and prompt."""
    parts = worker_files(cache_file)
    records = [r for part in parts for r in read_records(part)]
    if records:
        with open(cache_file, "a") as cache:
            cache.writelines(json.dumps(r) + "\n" for r in records)
    for part in parts:
        part.unlink()
    return records


def _answer_in_workers(
    model: nn.Module,
    job: _AnswerJob,
    batches: list[list[int]],
    cache_file: Path,
    workers: int,
    progress: Progress,
) -> list[Record]:
    """job.run on every `workers`-th batch in each of `workers` forked processes (the model's weights shared
    copy-on-write), each writing a file of its own, merged into cache_file once all have finished."""
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_worker,
            args=(
                model,
                job,
                batches[k::workers],
                cache_file.with_name(f"{cache_file.name}.worker{k}"),
                threads,
            ),
        )
        for k in range(workers)
    ]
    for process in processes:
        process.daemon = True  # ends with the run that started it
        process.start()
    counted = 0
    while any(process.is_alive() for process in processes):
        time.sleep(5)
        written = sum(_count_lines(part) for part in worker_files(cache_file))
        progress.update(written - counted)
        counted = written
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise EaglexError(
            f"an answer-writing worker stopped with exit code {failed[0]}: rerun the same command to resume"
        )
    return _merge_worker_files(cache_file)


def _worker(model: nn.Module, job: _AnswerJob, batches: list[list[int]], out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    job.run(model, batches, out, None)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def regenerate(
    model: nn.Module,
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    cache_file: Path,
    max_new_tokens: int,
    max_prompt_tokens: int,
    stop_ids: Sequence[int],
    batch_size: int,
    report: Callable[[str], None],
    turns: int = 1,
    workers: int = 1,
) -> tuple[list[Sample | None], list[Sample | None]]:
    """Greedy answers to the first `turns` user turns of each conversation, as two samples per conversation:
    the first turn (loss on its answer) and, when a later turn was answered, the conversation through its
    last answered turn (loss on answers 2 and up). None where there is no such sample: a prompt longer
    than max_prompt_tokens ends a conversation's answers.

    `workers` > 1 splits each turn's batches between that many forked processes (CPU only), each with its
    share of torch's threads: a decode step of SmolLM2 is bound by per-operation overhead more than by
    arithmetic, so two one-thread processes write more than one process of two threads."""
    _merge_worker_files(cache_file)  # what the workers of a stopped run had written
    cached = _read_cache(cache_file)
    done: dict[tuple[int, int], Record] = {}
    for turn in range(1, turns + 1):
        prompts: dict[int, list[int]] = {}
        for i, messages in enumerate(conversations):
            if turn == 1:
                prompt = encode_prompt(tokenizer, first_turn(messages))
            elif (i, turn - 1) in done:
                earlier = [done[i, t] for t in range(1, turn)]
                prompt = next_prompt(tokenizer, messages, earlier, stop_ids)
            else:
                continue
            if prompt is None or len(prompt) > max_prompt_tokens:
                continue
            prompts[i] = prompt
            # An answer counts only for the very prompt it was generated for.
            if (i, turn) in cached and cached[i, turn]["prompt"] == prompt:
                done[i, turn] = cached[i, turn]
        todo = sorted((i for i in prompts if (i, turn) not in done), key=lambda i: len(prompts[i]))
        if not todo:
            continue
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        what = f"regenerate answers ({dtype})" + (f", turn {turn}" if turns > 1 else "")
        progress = Progress(what, len(todo), report, unit="answers")
        batches = [
            [todo[k] for k in b]
            for b in prompt_batches([len(prompts[i]) for i in todo], max_new_tokens, batch_size)
        ]
        job = _AnswerJob(prompts, turn, max_new_tokens, list(stop_ids))
        if workers > 1:
            records = _answer_in_workers(model, job, batches, cache_file, workers, progress)
        else:
            records = job.run(model, batches, cache_file, progress)
        done.update(((r["index"], r["turn"]), r) for r in records)
        rate = sum(len(r["answer"]) for r in records) / (time.perf_counter() - progress.started)
        report(progress.line(f"done, {rate:.1f} generated tokens/s"))
    # Answers cached before dtypes were recorded were all written in float32.
    writers = Counter(record.get("dtype", "float32") for record in done.values())
    report("answers by weight dtype: " + ", ".join(f"{n} {d}" for d, n in sorted(writers.items())))
    first: list[Sample | None] = []
    later: list[Sample | None] = []
    for i in range(len(conversations)):
        if (i, 1) not in done:
            first.append(None)
            later.append(None)
            continue
        prompt, answer = done[i, 1]["prompt"], done[i, 1]["answer"]
        first.append(Sample(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
        answered = [done[i, t] for t in range(2, turns + 1) if (i, t) in done]
        if not answered:
            later.append(None)
            continue
        ids = answered[-1]["prompt"] + answered[-1]["answer"]
        mask = [False] * len(ids)
        for record in answered:
            start = len(record["prompt"])
            mask[start : start + len(record["answer"])] = [True] * len(record["answer"])
        later.append(Sample(ids, mask))
    return first, later
