"""bench/isolate.py: each bench method in a process of its own, answering prompt by prompt."""

from __future__ import annotations

import os

import pytest

from eaglex.bench.isolate import ISOLATED, PASSIVE_BY_EAGLEX, start
from eaglex.bench.methods import Decode
from eaglex.errors import EaglexError


class Echo:
    """Returns the prompt's first n tokens, its process id, whether it knows it is isolated and whether
    OpenMP's wait policy is left to its default."""

    name, setup, reference = "echo", "a test method", "someone"

    def __call__(self, prompt: list[int], n: int) -> Decode:
        if n == 0:
            raise EaglexError("n must be positive")
        if n < 0:
            os._exit(3)  # a crash: no reply at all
        facts = [os.getpid(), int(os.environ.get(ISOLATED, "0")), int("OMP_WAIT_POLICY" not in os.environ)]
        return Decode([*prompt[:n], *facts], 1.0, n, 0)


def cannot_build() -> Echo:
    raise EaglexError("no such model")


def test_methods_run_in_their_own_processes(monkeypatch):
    # As after `import eaglex.bench.llamacpp` in the parent: passive waiting, set by eaglex.
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv(PASSIVE_BY_EAGLEX, "1")
    first, second = start([Echo, Echo])
    try:
        assert (first.name, first.setup, first.reference) == ("echo", "a test method", "someone")
        a, b = first([7, 8, 9], 2), second([7, 8, 9], 2)
        assert a.tokens[:2] == b.tokens[:2] == [7, 8]
        assert len({a.tokens[2], b.tokens[2], os.getpid()}) == 3  # three processes
        assert a.tokens[3] == 1  # the child knows (bench/llamacpp.py then keeps OpenMP's default)
        assert a.tokens[4] == 1  # and eaglex's passive default for shared processes is undone there
        with pytest.raises(EaglexError, match="echo: n must be positive"):
            first([1], 0)
        assert first([4, 5], 1).tokens[0] == 4  # an error in one call leaves the method usable
        with pytest.raises(EaglexError, match="died"):
            second([1], -1)
    finally:
        first.close()
        second.close()
    assert not first.process.is_alive() and not second.process.is_alive()


def test_a_method_that_cannot_be_built_stops_the_run():
    with pytest.raises(EaglexError, match="no such model"):
        start([Echo, cannot_build])
