"""Progress lines: the rate and time left follow the last minutes of work, not the average since start."""

from __future__ import annotations

import pytest

from eaglex.train import progress as progress_module
from eaglex.train.progress import RATE_WINDOW_SECONDS, Progress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_rate_counts_only_this_process_and_reports_time_left(clock):
    lines: list[str] = []
    progress = Progress("train", 1000, lines.append, done=400, every=10)
    clock.now += 20
    progress.update(100)  # 100 tokens in 20 s in this process; the 400 resumed ones do not count
    assert progress.rate == pytest.approx(5.0)
    assert lines == ["train: 500/1000 tokens (50.0%) | 5.0 tokens/s | 1m40s left"]


def test_rate_forgets_a_pause_once_it_leaves_the_window(clock):
    progress = Progress("answers", 10_000, lambda _: None, unit="answers", every=10)
    for _ in range(30):  # 5 minutes at 2 answers/s
        clock.now += 10
        progress.update(20)
    clock.now += 3600  # paused for an hour (SIGSTOP), then back at 2 answers/s
    progress.update(0, force=True)
    assert progress.rate < 0.5  # the pause is inside the window for now
    for _ in range(2 * int(RATE_WINDOW_SECONDS) // 10):
        clock.now += 10
        progress.update(20)
    assert progress.rate == pytest.approx(2.0, rel=0.03)  # a since-start average would say ~0.8


def test_rate_follows_a_phase_that_slows_down(clock):
    progress = Progress("answers", 100_000, lambda _: None, unit="answers", every=10)
    for per_step in (40, 10):  # 4/s for 30 minutes, then 1/s for 30 minutes
        for _ in range(180):
            clock.now += 10
            progress.update(per_step)
    assert progress.rate == pytest.approx(1.0, rel=0.03)


def test_format_seconds():
    assert format_seconds(59.6) == "1m00s"
    assert format_seconds(3 * 3600 + 125) == "3h02m"
    assert format_seconds(-5) == "0m00s"
