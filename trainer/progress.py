"""Progress lines with rate and time remaining, for the phases that take minutes to hours on a CPU."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# The rate is taken over about the last ten minutes, not since the start: a phase speeds up or slows down as
# it goes (regeneration answers the longest prompts last), and a process paused for a while would
# otherwise promise too much for the rest of the run.
RATE_WINDOW_SECONDS = 600.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Counts work done in one phase and reports `done/total, rate, ETA` at most every `every` seconds.

    `done` may start above zero (a resumed phase): the rate only counts work done in this process, over
    about the last RATE_WINDOW_SECONDS.
    """

    def __init__(
        self,
        what: str,
        total: int,
        report: Callable[[str], None],
        unit: str = "tokens",
        done: int = 0,
        every: float = 15.0,
    ) -> None:
        self.what, self.total, self.report, self.unit, self.every = what, total, report, unit, every
        self.done = self.start_done = done
        self.started = self.last_report = time.perf_counter()
        # (time, done) at each report; the first is the newest one at least a window old, or the start.
        self.marks = deque([(self.started, done)])

    @property
    def rate(self) -> float:
        """Units per second over about the last RATE_WINDOW_SECONDS of this process."""
        since, done_then = self.marks[0]
        return (self.done - done_then) / max(time.perf_counter() - since, 1e-9)

    def update(self, amount: int, note: str = "", force: bool = False) -> None:
        self.done += amount
        now = time.perf_counter()
        if force or now - self.last_report >= self.every:
            self.last_report = now
            self.report(self.line(note))
            self.marks.append((now, self.done))
            while len(self.marks) > 1 and self.marks[1][0] <= now - RATE_WINDOW_SECONDS:
                self.marks.popleft()

    def line(self, note: str = "") -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        remaining = format_seconds(eta) if eta != float("inf") else "?"
        percent = 100.0 * self.done / max(self.total, 1)
        text = (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({percent:.1f}%) | "
            f"{rate:.1f} {self.unit}/s | {remaining} left"
        )
        return f"{text} | {note}" if note else text
