"""Median ms of a decoding round's calls, a target pass then drafter calls, with the thread pools as shipped
or as they were before 2026-12-06 (`--pools before`: the drafter's workers never spin, the target's spin on
after each call). Run each setting in a process of its own, in turn (A B A B ...), and compare medians of
one sitting: the setting is onnxruntime's, fixed when a session opens.

    python experiments/round_calls.py ARTIFACT --pools shipped|before [--rows 4] [--drafter-rows 2]
        [--drafter-calls 3] [--rounds 200] [--context 300]
"""

from __future__ import annotations

import statistics
import time

import harness
from profile_passes import drafter_call, target_call

from eaglex.runtime.backends import onnxruntime as backend
from eaglex.runtime.engine import Engine


def use_old_pools() -> None:
    """Session options as before: the first session opened (the target) spins on between calls, the
    second (the drafter) never spins."""
    shipped, opened = backend.session_options, []
    backend.ort.set_default_logger_severity(3)  # overwriting force_spinning_stop is what this means to do

    def before(threads: int, spin: bool = True):
        options = shipped(threads, spin=not opened)
        options.add_session_config_entry("session.force_spinning_stop", "0")
        opened.append(options)
        return options

    backend.session_options = before


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--pools", choices=("shipped", "before"), default="shipped")
    parser.add_argument("--rows", type=int, default=4, help="rows of the target pass")
    parser.add_argument("--drafter-rows", type=int, default=2)
    parser.add_argument("--drafter-calls", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--context", type=int, default=300)
    args = parser.parse_args()
    if args.pools == "before":
        use_old_pools()
    engine = Engine.load(args.artifact, threads=args.threads, checksums=False, runtime="python")
    target = target_call(engine, args.rows, args.context)
    drafter = drafter_call(engine, args.drafter_rows, args.context)
    passes, calls, rounds = [], [], []
    for i in range(args.rounds + 10):  # the first ten warm up
        start = time.perf_counter()
        target()
        passed = time.perf_counter()
        for _ in range(args.drafter_calls):
            called = time.perf_counter()
            drafter()
            calls.append(time.perf_counter() - called)
        if i >= 10:
            passes.append(passed - start)
            rounds.append(time.perf_counter() - start)
    del calls[: 10 * args.drafter_calls]
    ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
    print(
        f"pools {args.pools}: target {args.rows} rows {ms(passes):.2f} ms, drafter {args.drafter_rows} rows "
        f"{ms(calls):.3f} ms, round {ms(rounds):.2f} ms (medians of {args.rounds})"
    )


if __name__ == "__main__":
    main()
