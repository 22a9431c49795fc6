"""What every experiment shares: its command-line options, the prompts it decodes, and interleaved A/B timing.

The project's machines are shared and noisy, so a comparison is only trusted within one run: candidates are
timed in turn, repetition after repetition, with the order rotated each time so that none always runs first
(after the other's caches and threads), and the report gives each candidate's median with its ratio to the
baseline. An experiment uses it as

    parser = harness.parser(__doc__, artifact=True)            # ARTIFACT, --threads, --reps
    times = harness.interleaved({"old": run_old, "new": run_new}, reps=args.reps)
    print(harness.table(times, baseline="old", unit="s"))

Experiments run as `python experiments/NAME.py`, which puts this folder on sys.path: `import harness`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from types import ModuleType

REPOSITORY = Path(__file__).resolve().parents[1]
PROMPTS = REPOSITORY / "tests" / "data" / "prompts.json"


def parser(doc: str | None, *, artifact: bool = False, threads: int = 2, reps: int | None = None):
    """An argument parser with the options experiments share: a positional ARTIFACT (when `artifact`),
    `--threads` (onnxruntime or torch threads) and, when `reps` is given, `--reps` (interleaved repetitions).
    The description is the first line of the experiment's docstring."""
    result = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    if artifact:
        result.add_argument("artifact", type=Path, help="an artifact folder (eaglex export --out)")
    result.add_argument("--threads", type=int, default=threads, help="threads per session")
    if reps is not None:
        result.add_argument("--reps", type=int, default=reps, help="interleaved repetitions")
    return result


def from_scripts(name: str) -> ModuleType:
    """A module of scripts/ (the commands users run), for an experiment that measures the same way."""
    folder = str(REPOSITORY / "scripts")
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


def chat_prompts(count: int | None = None) -> list[str]:
    """The chat prompts of tests/data/prompts.json, the first `count` of them (all when None)."""
    texts = [p["text"] for p in json.loads(PROMPTS.read_text()) if p["chat"]]
    return texts if count is None else texts[:count]


def rotations(names: list, reps: int) -> list[list]:
    """The order candidates run in, per repetition: each starts once every len(names) repetitions."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(reps)]


def interleaved(
    candidates: Mapping[Hashable, Callable[[], float | None]],
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, list[float]]:
    """Runs every candidate `reps` times, interleaved and in rotating order; returns each one's values.

    A candidate that returns a number reports its own measure (tokens/s, say: only its decoding counted);
    one that returns None is timed whole, in seconds."""
    values: dict[Hashable, list[float]] = {name: [] for name in candidates}
    for order in rotations(list(candidates), reps):
        for name in order:
            started = clock()
            measured = candidates[name]()
            values[name].append(clock() - started if measured is None else float(measured))
    return values


def medians(values: Mapping[Hashable, list[float]]) -> dict[Hashable, float]:
    return {name: statistics.median(v) for name, v in values.items()}


def ratios(values: Mapping[Hashable, list[float]], baseline: Hashable) -> dict[Hashable, float]:
    """Each candidate's median over the baseline's: above 1 is faster for a rate, slower for seconds."""
    middle = medians(values)
    return {name: m / middle[baseline] for name, m in middle.items()}


def table(values: Mapping[Hashable, list[float]], baseline: Hashable, unit: str) -> str:
    """A markdown table: candidate, median, min and max over the repetitions, ratio to the baseline."""
    middle, ratio = medians(values), ratios(values, baseline)
    rows = [f"| candidate | median {unit} | min | max | / {baseline} |", "|---|---|---|---|---|"]
    for name, v in values.items():
        rows.append(f"| {name} | {middle[name]:.3g} | {min(v):.3g} | {max(v):.3g} | {ratio[name]:.2f}x |")
    return "\n".join(rows)


def machine(threads: int) -> str:
    """One line naming the machine, for the record next to the numbers."""
    return f"{platform.machine()}, {platform.processor() or 'cpu'}, {threads} threads, shared machine"
