"""Each `eaglex bench` method in a process of its own, still interleaved prompt by prompt.

Why: runtimes that share a process share its cores' time through their thread pools. onnxruntime's
workers spin between operators, llama.cpp's OpenMP threads spin at barriers; in one process the
methods had to be configured to sleep instead (llama.cpp f32 decoded at 36 tok/s that way against
82-95 with its default spinning, docs/BENCHMARKS.md), which handicaps whoever pays for it. In a process
of its own each runs as its users run it, and an idle one sleeps while another decodes.

A method is given as a recipe: a picklable zero-argument callable (functools.partial of a top-level
function) that builds it in the child. The child answers each (prompt, max_new_tokens) with a Decode.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

from eaglex.bench.methods import Decode, Method
from eaglex.errors import EaglexError

Recipe = Callable[[], Method]
ISOLATED = "EAGLEX_BENCH_ISOLATED"  # set in each child: bench/llamacpp.py keeps OpenMP's default waiting
PASSIVE_BY_EAGLEX = "EAGLEX_OMP_PASSIVE"  # OMP_WAIT_POLICY=passive came from bench/llamacpp.py, not the user


class Isolated:
    """A Method whose work runs in a child process (spawned, so nothing is inherited but the recipe)."""

    def __init__(self, recipe: Recipe):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        # The recipe travels pickled, so the child unpickles it (importing the method's module) only after
        # it has set ISOLATED: some modules read the environment when imported.
        payload = pickle.dumps(recipe)
        self.process = context.Process(target=_serve, args=(child, payload), daemon=True)
        self.process.start()
        child.close()
        self.name = self.setup = ""
        self.reference: str | None = None

    def wait_ready(self) -> Isolated:
        _, self.name, self.setup, self.reference = self._receive()
        return self

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
        self.connection.send((prompt, max_new_tokens))
        return self._receive()[1]

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # the child may be gone already
                self.connection.send(None)
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
        self.connection.close()

    def _receive(self) -> tuple:
        try:
            reply = self.connection.recv()
        except EOFError:
            raise EaglexError(
                f"the benchmark process of {self.name or 'a method'} died (exit code "
                f"{self.process.exitcode}); rerun with --in-process to see its traceback"
            ) from None
        if reply[0] == "error":
            raise EaglexError(reply[1])
        return reply


def start(recipes: Sequence[Recipe]) -> list[Isolated]:
    """Starts every method's process at once (they load in parallel), then waits until all are ready."""
    methods = [Isolated(recipe) for recipe in recipes]
    try:
        return [method.wait_ready() for method in methods]
    except BaseException:
        for method in methods:
            method.close()
        raise


def _serve(connection: Connection, payload: bytes) -> None:
    os.environ[ISOLATED] = "1"
    if os.environ.pop(PASSIVE_BY_EAGLEX, None):  # the parent's in-process default; alone, use OpenMP's
        os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        method = pickle.loads(payload)()
    except EaglexError as e:
        connection.send(("error", str(e)))
        return
    connection.send(("ready", method.name, method.setup, getattr(method, "reference", None)))
    while (request := connection.recv()) is not None:
        try:
            connection.send(("decode", method(*request)))
        except EaglexError as e:
            connection.send(("error", f"{method.name}: {e}"))
