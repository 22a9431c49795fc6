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

from dataclasses import dataclass

import numpy as np

from eaglex.bench.tune import _median_seconds
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
    capacity = min(engine.target.capacity, drafter.session.capacity)
    verify: dict[tuple[int, int], float] = {}
    grow: dict[tuple[int, int, int], float] = {}
    commit: dict[tuple[int, int], float] = {}
    for b in batches:
        # Each sequence's region holds `cached` tokens; the pass's rows and the tree levels go above them.
        cached = min(context, (capacity - 2 * rows_per_pass) // b)
        if cached < 2:
            raise EaglexError(
                f"the artifact's context of {capacity} holds no {b} sequences next to {rows_per_pass} rows "
                "per pass: lower --batch-sizes or --rows-per-pass"
            )
        seqs = [Sequence([1] * cached, GenerationConfig(), i * cached, cached, 1 << 30) for i in range(b)]
        top = b * cached
        progress(f"batch {b}: timing packed target passes ({cached} cached tokens per sequence)")
        for t in (1, *(t for t in sizes if b * t <= rows_per_pass)):
            verify[b, t] = _time_pass(runner, seqs, t, top, reps)
        progress(f"batch {b}: timing the drafter (commit and tree growth)")
        for k in top_ks:
            commit[b, k], by_depth = _time_drafter(
                runner, seqs, k, max_depth, top, capacity, rows_per_pass, reps
            )
            grow |= {(b, k, d): seconds for d, seconds in by_depth.items()}
    return BatchCosts(verify, grow, commit)


def _time_pass(runner: PackedStep, seqs: list[Sequence], nodes: int, top: int, reps: int) -> float:
    """Seconds of one packed target pass over a tree of `nodes` per sequence (a chain: rows cost the same
    whatever their shape), each sequence reset to its state before the pass for every repetition."""
    tree, cached = chain_tree(np.ones(nodes, np.int64)), seqs[0].size

    def reset() -> None:
        for seq in seqs:
            seq.tree, seq.committed, seq.generated, seq.done = tree, cached, [1], False

    reset()
    segments = [verify_segment(seq) for seq in seqs]
    return _median_seconds(lambda: runner.target_pass(segments, top), reps, reset)


def _time_drafter(
    runner: PackedStep,
    seqs: list[Sequence],
    top_k: int,
    max_depth: int,
    top: int,
    capacity: int,
    rows_per_pass: int,
    reps: int,
) -> tuple[float, dict[int, float]]:
    """Seconds of the drafter call that commits two rows per sequence, and of growing every sequence's tree
    to each depth (from the top-k that commit leaves), trees of the pass's share of `rows_per_pass`."""
    drafter = runner.drafter
    assert drafter is not None
    cached = seqs[0].size
    rows = (np.ones(2, np.int64), np.zeros((2, 3 * drafter.embeddings.shape[1]), np.float32))

    def two_rows_pending() -> None:
        for seq in seqs:
            seq.config, seq.drafted, seq.pending = GenerationConfig(top_k=top_k), cached - 2, rows

    two_rows_pending()
    commit = _median_seconds(lambda: runner.extend(seqs, top), reps, two_rows_pending)
    nodes = [max(1, rows_per_pass // len(seqs))] * len(seqs)
    grow = {}
    for depth in range(1, max_depth + 1):
        for seq in seqs:
            seq.config = GenerationConfig(top_k=top_k, depth=depth)
        grow[depth] = _median_seconds(lambda: runner.grow(seqs, nodes, top, capacity - top), reps)
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
