"""`eaglex tune --batch-sizes`: the draft tree for each batch size of the serving scheduler.

A serving pass packs the rows of b decoding sequences into one target pass (runtime/batch.py), so b trees
of T nodes cost a pass of b*T rows: the larger the batch, the smaller the tree that pays, and at some
batch size plain decoding's b rows win. The drafter is batched the same way: one call commits every
sequence's accepted rows, and each tree level below the first is one call over all sequences' frontiers.
So for each batch size b this times, with the scheduler's own `PackedStep` on b sequences in their own
cache regions (as many cached tokens each as tune's calibration prompts hold on average):
  - the packed target pass with a tree of T nodes per sequence (T = 1: plain decoding), acceptance and the
    moves into the regions included;
  - growing b trees of every (top_k, depth), and the drafter call that commits two rows per sequence;
and `pick` combines them with the acceptance `tune` estimates per tree shape (a sequence accepts the same
drafts whoever shares its pass): aggregate tokens/s = b * (accepted + 1) / (pass + growth + commit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eaglex.bench.round_costs import median_seconds
from eaglex.errors import EaglexError
from eaglex.runtime.batch import PackedStep, Sequence, verify_segment
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.tree import chain_tree


@dataclass(frozen=True)
class BatchCosts:
    """Seconds of each part of a serving step, for b sequences sharing every call."""

    verify: dict[tuple[int, int], float]  # (b, nodes per tree) -> the packed target pass
    grow: dict[tuple[int, int, int], float]  # (b, top_k, depth) -> growing b trees
    commit: dict[tuple[int, int], float]  # (b, top_k) -> the drafter call committing two rows each


@dataclass(frozen=True)
class Choice:
    """The best tree for `batch` sequences per pass (speculative False: plain decoding, one node each)."""

    batch: int
    speculative: bool
    top_k: int
    depth: int
    total_tokens: int
    tokens_per_second: float  # predicted, all sequences together
    plain_tokens_per_second: float


def pick(
    accepted: dict[tuple[int, int, int], float],
    costs: BatchCosts,
    batches: tuple[int, ...],
    rows_per_pass: int,
) -> list[Choice]:
    """Per batch size b, the shape (top_k, depth, total_tokens) of the most predicted tokens/s over all b
    sequences, or plain decoding where that is faster. A shape is a candidate where b trees fit the pass's
    `rows_per_pass` rows (the scheduler cuts larger ones) and its pass was timed. Plain decoding still pays
    the drafter call that commits each emitted token: the scheduler keeps the drafter in step, so trees
    resume as soon as the batch shrinks."""
    choices = []
    for b in batches:
        plain_k = min(k for (batch, k) in costs.commit if batch == b)
        plain = b / (costs.verify[b, 1] + costs.commit[b, plain_k])
        best, best_rate = (plain_k, 1, 1), plain
        for (k, d, t), drafts in sorted(accepted.items()):
            # A tree larger than its pool is the same tree; one deeper than its nodes reach, a wasteful one.
            if b * t > rows_per_pass or (b, t) not in costs.verify or not d < t <= 1 + k + (d - 1) * k * k:
                continue
            rate = b * (drafts + 1) / (costs.verify[b, t] + costs.grow[b, k, d] + costs.commit[b, k])
            if rate > best_rate:
                best, best_rate = (k, d, t), rate
        choices.append(Choice(b, best_rate > plain, *best, best_rate, plain))
    return choices


def region_tokens(engine: Engine, batch: int, rows_per_pass: int) -> int:
    """Cached tokens each of `batch` sequences may hold while timing: the pass's rows and the tree levels go
    above the regions. Tune calls this before its long work, so a batch size that does not fit fails early."""
    capacity = _capacity(engine)
    tokens = (capacity - 2 * rows_per_pass) // batch
    if tokens < 2:
        raise EaglexError(
            f"the artifact's context of {capacity} holds no {batch} sequences next to {rows_per_pass} rows "
            "per pass: lower --batch-sizes or --rows-per-pass"
        )
    return tokens


def measure(
    engine: Engine,
    batches: tuple[int, ...],
    sizes: tuple[int, ...],
    top_ks: tuple[int, ...],
    max_depth: int,
    reps: int,
    context: int,
    rows_per_pass: int,
    progress,
) -> BatchCosts:
    """Times the parts of a serving step for each batch size (see the module's docstring)."""
    drafter = engine.drafter
    assert drafter is not None
    runner = PackedStep(engine.target, drafter, set())
    capacity = _capacity(engine)
    verify: dict[tuple[int, int], float] = {}
    grow: dict[tuple[int, int, int], float] = {}
    commit: dict[tuple[int, int], float] = {}
    for b in batches:
        cached = min(context, region_tokens(engine, b, rows_per_pass))
        seqs = [Sequence([1] * cached, GenerationConfig(), i * cached, cached, 1 << 30) for i in range(b)]
        timer = _BatchTimer(runner, seqs, b * cached, capacity - b * cached, reps)
        progress(f"batch {b}: timing packed target passes ({cached} cached tokens per sequence)")
        for t in (1, *(t for t in sizes if b * t <= rows_per_pass)):
            verify[b, t] = timer.target_pass(t)
        progress(f"batch {b}: timing the drafter (commit and tree growth)")
        for k in top_ks:
            commit[b, k], by_depth = timer.drafter(k, max_depth, max(1, rows_per_pass // b))
            grow |= {(b, k, d): seconds for d, seconds in by_depth.items()}
    return BatchCosts(verify, grow, commit)


def _capacity(engine: Engine) -> int:
    assert engine.drafter is not None
    return min(engine.target.capacity, engine.drafter.session.capacity)


@dataclass
class _BatchTimer:
    """Times the scheduler's calls for these sequences, each repetition from the state a serving step meets.

    Their regions hold `size` cached tokens each; the pass's rows go at `top`, tree levels below top + room.
    Drafter calls are timed after a target pass, as in serving (drafter calls timed alone ran at half the
    time they take in a decoding round: bench/tune.py)."""

    runner: PackedStep
    seqs: list[Sequence]
    top: int
    room: int
    reps: int

    def _pass(self, nodes: int) -> tuple[Callable[[], None], Callable[[], object]]:
        """(reset, call): one packed target pass over a tree of `nodes` per sequence (a chain: rows cost the
        same whatever their shape) and the reset of every sequence to its state before that pass."""
        tree, cached = chain_tree(np.ones(nodes, np.int64)), self.seqs[0].size

        def reset() -> None:
            for seq in self.seqs:
                seq.tree, seq.committed, seq.generated, seq.done = tree, cached, [1], False

        reset()
        segments = [verify_segment(seq) for seq in self.seqs]
        return reset, lambda: self.runner.target_pass(segments, self.top)

    def target_pass(self, nodes: int) -> float:
        reset, call = self._pass(nodes)
        return median_seconds(call, self.reps, reset)

    def drafter(self, top_k: int, max_depth: int, nodes: int) -> tuple[float, dict[int, float]]:
        """Seconds of the drafter call that commits two rows per sequence, and of growing every sequence's
        tree of `nodes` nodes to each depth from the top-k that commit leaves."""
        drafter, seqs = self.runner.drafter, self.seqs
        assert drafter is not None
        cached = seqs[0].size
        rows = (np.ones(2, np.int64), np.zeros((2, 3 * drafter.embeddings.shape[1]), np.float32))
        reset_pass, plain_pass = self._pass(1)
        config = GenerationConfig(top_k=top_k)

        def after_a_pass() -> None:
            reset_pass()
            plain_pass()
            for seq in seqs:
                seq.config, seq.drafted, seq.pending = config, cached - 2, rows

        def after_commit() -> None:
            after_a_pass()
            self.runner.extend(seqs, self.top)

        def grow_trees() -> None:
            self.runner.grow(seqs, [nodes] * len(seqs), self.top, self.room)

        after_a_pass()
        commit = median_seconds(lambda: self.runner.extend(seqs, self.top), self.reps, after_a_pass)
        grow = {}
        for depth in range(1, max_depth + 1):
            config = GenerationConfig(top_k=top_k, depth=depth)  # what after_a_pass gives the sequences
            after_commit()
            grow[depth] = median_seconds(grow_trees, self.reps, after_commit)
        return commit, grow


def to_json(choices: list[Choice], costs: BatchCosts, rows_per_pass: int) -> dict:
    """The by-batch part of tune.json: the choices and the costs they came from."""
    return {
        "rows_per_pass": rows_per_pass,
        "choices": [choice.__dict__ for choice in choices],
        "verify_seconds": {f"batch {b} nodes {t}": v for (b, t), v in costs.verify.items()},
        "grow_seconds": {f"batch {b} top_k {k} depth {d}": v for (b, k, d), v in costs.grow.items()},
        "commit_seconds": {f"batch {b} top_k {k}": v for (b, k), v in costs.commit.items()},
    }
