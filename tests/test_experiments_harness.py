"""experiments/harness.py: interleaved A/B timing in rotating order, medians and ratios, shared options."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import harness


def test_rotations_start_every_candidate_equally_often():
    orders = harness.rotations(["a", "b", "c"], 6)
    assert [order[0] for order in orders] == ["a", "b", "c", "a", "b", "c"]
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)


def test_interleaved_runs_in_turn_and_times_or_takes_measures():
    calls: list[str] = []
    ticks = itertools.count()  # every clock reading one second later: each timed call lasts 1 s

    def timed() -> None:
        calls.append("timed")

    def rate() -> float:
        calls.append("rate")
        return 7.5

    values = harness.interleaved({"timed": timed, "rate": rate}, reps=3, clock=lambda: next(ticks))
    assert values == {"timed": [1, 1, 1], "rate": [7.5, 7.5, 7.5]}
    assert calls == ["timed", "rate", "rate", "timed", "timed", "rate"]


def test_table_gives_medians_and_ratios_to_the_baseline():
    values = {"old": [3.0, 1.0, 2.0], "new": [4.0, 8.0, 6.0]}
    assert harness.medians(values) == {"old": 2.0, "new": 6.0}
    assert harness.ratios(values, "old") == {"old": 1.0, "new": 3.0}
    table = harness.table(values, baseline="old", unit="tok/s").splitlines()
    assert table[0].startswith("| candidate | median tok/s")
    assert table[3] == "| new | 6 | 4 | 8 | 3.00x |"


def test_parser_has_the_shared_options():
    args = harness.parser("Doc line.\nMore.", artifact=True, reps=3).parse_args(["ART", "--threads", "1"])
    assert (str(args.artifact), args.threads, args.reps) == ("ART", 1, 3)
    assert len(harness.chat_prompts(2)) == 2
