"""Continuous batching (runtime/batch.py, runtime/scheduler.py) on a tiny exported model: every greedy
sequence of a packed batch equals its plain greedy output alone, with requests joining and leaving, prompts
prefilled in chunks, deep accepted paths (oracle trees), cancellation; sampling keeps the target's
distribution with several sequences per pass."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from speculative_stats import chi_square, critical_value, flawed_rule
from test_sampling_e2e import PROMPT, TEMPERATURE, TopTokensDrafter, exact, exact_second_and_third

import eaglex.runtime.batch as batch_module
from eaglex.errors import EaglexError
from eaglex.runtime.batch import PackedStep, Segment, Sequence, pack
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats
from eaglex.runtime.prefix_cache import Cached, PrefixCache
from eaglex.runtime.scheduler import BatchEngine, QueueFull, Regions
from eaglex.runtime.tree import DraftTree

__all__ = ["exact"]  # the fixture, shared with test_sampling_e2e
MAX_CONTEXT = 256


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("batch")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    artifact = export_artifact(
        model, tmp / "artifact", drafter_dir=drafter, max_context=MAX_CONTEXT, progress=lambda _: None
    )
    engine = Engine.load(artifact, threads=1)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    return engine


def prompts(count: int, seed: int = 0, longest: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 128, rng.integers(1, longest)).tolist() for _ in range(count)]


def alone(engine: Engine, prompt: list[int], config: GenerationConfig) -> list[int]:
    return [t for chunk in engine.generate(prompt, config) for t in chunk]


def concurrently(
    batch: BatchEngine,
    items: list[tuple[list[int], GenerationConfig]],
    stats: list[GenerationStats] | None = None,
) -> list[list[int]]:
    """Each request from its own thread, all at once; stats[i], when given, receives request i's."""
    outputs: list[list[int]] = [[] for _ in items]

    def worker(i: int) -> None:
        outputs[i] = [t for chunk in batch.generate(*items[i], stats[i] if stats else None) for t in chunk]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outputs


def test_pack_builds_a_block_diagonal_mask():
    config = GenerationConfig()
    a, b = Sequence([1, 2, 3], config, 0, 8, 4), Sequence([4, 5], config, 10, 8, 4)
    tree = np.array([[1, 0], [1, 1]], bool)
    one = np.ones((1, 1), bool)
    segments = [
        Segment(a, np.array([7, 8]), np.array([3, 4]), tree, 3),
        Segment(b, np.array([9]), [2], one, 2),
    ]
    packed = pack(segments, 20)
    assert packed.tokens.tolist() == [7, 8, 9] and packed.offsets.tolist() == [0, 2]
    expected = np.zeros((3, 23), bool)
    expected[0:2, 0:3] = True  # a's committed slots
    expected[0:2, 20:22] = tree  # a's own rows
    expected[2, 10:12] = True  # b's committed slots
    expected[2, 22] = True  # b's own row
    assert np.array_equal(packed.mask, expected)


def test_regions_first_fit_and_top():
    regions = Regions(100)
    assert [regions.allocate(30), regions.allocate(30), regions.allocate(30)] == [0, 30, 60]
    assert regions.allocate(20) is None and regions.top == 90
    regions.free(30, 30)
    assert regions.allocate(10) == 30 and regions.allocate(25) is None and regions.allocate(20) == 40
    regions.free(60, 30)
    assert regions.top == 60


@pytest.mark.parametrize(("max_batch", "prefill_chunk"), [(3, 7), (8, 64)])
def test_batched_greedy_equals_each_sequence_alone(engine, max_batch, prefill_chunk):
    """More requests than slots (they join as others leave), prompts longer than a chunk, mixed tree
    settings (probability cuts too), lengths and plain decoding in one batch."""
    settings = [
        {"max_new_tokens": 30},
        {"max_new_tokens": 17, "top_k": 4, "depth": 3, "total_tokens": 10},
        {"max_new_tokens": 25, "speculative": False},
        {
            "max_new_tokens": 20,
            "top_k": 4,
            "depth": 4,
            "total_tokens": 12,
            "min_path_probability": 0.02,
            "min_grow_probability": 0.022,
        },  # cuts that bite on the random drafter (0.02-0.025)
        {"max_new_tokens": 1},
    ]
    items = [
        (prompt, engine.default_config(**settings[i % len(settings)]))
        for i, prompt in enumerate(prompts(10, seed=max_batch))
    ]
    expected = [alone(engine, *item) for item in items]
    batch = BatchEngine(engine, max_batch=max_batch, prefill_chunk=prefill_chunk, rows_per_pass=48)
    try:
        assert concurrently(batch, items) == expected
        assert batch.metrics.finished == len(items) and not batch.active
        assert len(batch.regions.used) == len(batch.prefix.entries)  # only cached prefixes hold slots
    finally:
        batch.close()


class OracleTrees:
    """PackedStep.grow's stand-in: trees holding each sequence's reference continuation to a random depth
    at a random sibling position, so long paths are accepted and compacted out of the packed rows."""

    def __init__(self, references: dict[tuple[int, ...], list[int]], seed: int):
        self.references, self.rng = references, np.random.default_rng(seed)

    def __call__(self, seqs, sizes, top, room) -> None:  # an instance on the class: no self of PackedStep
        for seq in seqs:
            reference = self.references[tuple(seq.prompt)]
            emitted = len(seq.generated)
            truth = reference[emitted : emitted + int(self.rng.integers(0, 6))]
            tokens, parents, depths, parent = [seq.generated[-1]], [-1], [0], 0
            for level, token in enumerate(truth, start=1):
                siblings = [s for s in self.rng.integers(3, 128, 2).tolist() if s != token]
                siblings.insert(int(self.rng.integers(0, len(siblings) + 1)), token)
                for s in siblings:
                    tokens.append(s), parents.append(parent), depths.append(level)
                    if s == token:
                        on_path = len(tokens) - 1
                parent = on_path
            seq.tree = DraftTree(np.array(tokens), np.array(parents), np.array(depths))


def test_deep_accepted_paths_in_a_batch_stay_lossless(engine, monkeypatch):
    config = engine.default_config(max_new_tokens=40)
    items = [(p, config) for p in prompts(6, seed=3)]
    references = {
        tuple(p): alone(engine, p, engine.default_config(max_new_tokens=40, speculative=False))
        for p, _ in items
    }
    monkeypatch.setattr(PackedStep, "grow", OracleTrees(references, seed=0))
    batch = BatchEngine(engine, max_batch=4, prefill_chunk=16)
    try:
        stats = [GenerationStats() for _ in items]
        assert concurrently(batch, items, stats) == [references[tuple(p)] for p, _ in items]
        assert np.mean([s.acceptance_length for s in stats]) > 2  # deep paths really were accepted
    finally:
        batch.close()


def until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_cancel_frees_the_slot_and_a_full_queue_refuses(engine):
    long = engine.default_config(max_new_tokens=100)
    batch = BatchEngine(engine, max_batch=2, max_queue=1, prefill_chunk=16, rows_per_pass=16)
    try:
        first = batch.generate([5, 6, 7], engine.default_config(max_new_tokens=200))
        next(first)
        first.close()  # leaving the iterator cancels the request: its slot and region are freed
        for prompt in ([9, 9], [9, 10]):
            batch.submit(prompt, long, lambda tokens, end: None)
            until(lambda: not batch.waiting)
        until(lambda: len(batch.active) == 2 and batch.metrics.cancelled == 1)
        short = engine.default_config(max_new_tokens=12)
        batch.submit([9, 11], short, lambda tokens, end: None)  # both slots busy: it waits
        with pytest.raises(QueueFull, match="queue of 1 waiting"):
            batch.submit([9, 12], short, lambda tokens, end: None)
        prompt = prompts(1, seed=4)[0]
    finally:
        batch.close()
    assert batch.metrics.rejected == 1
    # The engine still decodes exactly after all that.
    assert alone(engine, prompt, short) == alone(engine, prompt, short)


def test_async_stream_and_the_engine_is_held(engine):
    config = engine.default_config(max_new_tokens=20)
    prompt = prompts(1, seed=9)[0]
    expected = alone(engine, prompt, config)
    batch = BatchEngine(engine, max_batch=4)
    try:
        with pytest.raises(EaglexError, match="already generating"):
            next(engine.generate(prompt, config))

        async def both() -> list[list[int]]:
            async def one() -> list[int]:
                return [t async for chunk in batch.stream(prompt, config) for t in chunk]

            return list(await asyncio.gather(one(), one()))

        assert asyncio.run(both()) == [expected, expected]
    finally:
        batch.close()
    assert alone(engine, prompt, config) == expected  # closing gave the engine back


@pytest.mark.parametrize("flawed", [False, True])
def test_batched_sampling_keeps_the_target_distribution(engine, exact, monkeypatch, flawed):
    """Several sampled sequences per pass, with trees of the target's likeliest tokens (accepted,
    rejected and accepted deep): the 2nd and 3rd tokens follow the exact distribution; the same test
    rejects a deliberately flawed acceptance rule."""
    _, p2, p3 = exact
    if flawed:
        monkeypatch.setattr(batch_module, "accept_sampling", flawed_rule(renormalise=False))

    def grow(step, seqs, sizes, top, room) -> None:
        for seq in seqs:
            drafter = TopTokensDrafter(p2, p3)
            drafter.history = [*PROMPT[1:], *seq.generated]
            seq.tree = drafter.propose(seq.generated[-1], 1, 2, 16)

    monkeypatch.setattr(PackedStep, "grow", grow)
    runs = 4000
    batch = BatchEngine(engine, max_batch=16, max_queue=runs, prefill_chunk=64, rows_per_pass=160)
    try:
        inboxes = [
            batch.generate(PROMPT, GenerationConfig(max_new_tokens=3, temperature=TEMPERATURE, seed=run))
            for run in range(runs)
        ]
        vocab = len(p2)
        counts = np.zeros((vocab, vocab), dtype=np.int64)
        for inbox in inboxes:
            tokens = [t for chunk in inbox for t in chunk]
            counts[tokens[1], tokens[2]] += 1
        assert batch.metrics.sequence_passes > 2 * batch.metrics.passes  # really batched
    finally:
        batch.close()
    stat, df = chi_square(counts, exact_second_and_third(exact))
    assert df >= 40
    assert (stat > critical_value(df)) == flawed, (stat, df, critical_value(df))


def test_prefix_cache_lookup_add_and_lru():
    cache = PrefixCache(max_slots=10)
    assert cache.add(Cached((1, 2, 3, 4), 0, 4, 4)) == []
    assert cache.lookup([1, 2, 3, 9, 9]) == (cache.entries[0], 2)  # shared 3 tokens: 2 rows
    assert cache.lookup([1, 2, 3, 4, 5, 6])[1] == 3 and cache.lookup([7, 1])[1] == 0
    longer = Cached((1, 2, 3, 4, 5), 20, 5, 5)
    assert cache.add(longer) == [cache_entry := Cached((1, 2, 3, 4), 0, 4, 4)]  # a prefix of it: redundant
    assert list(cache.entries.values()) == [longer] and cache_entry.start == 0
    assert cache.add(Cached((8, 8, 8), 40, 3, 3)) == []
    assert cache.add(Cached((9, 9, 9), 50, 3, 3)) == [longer]  # over 10 slots: the least recent goes


def test_a_second_turn_reuses_the_first_turns_cache_and_decodes_the_same(engine):
    config = engine.default_config(max_new_tokens=20)
    first = prompts(1, seed=11, longest=30)[0] + [5]
    answer = alone(engine, first, config)
    second = [*first, *answer, 7, 8, 9]
    expected = alone(engine, second, config)
    for slots in (0, None):  # off, then on (the default budget)
        batch = BatchEngine(engine, max_batch=2, prefill_chunk=8, prefix_cache=slots)
        try:
            assert [t for chunk in batch.generate(first, config) for t in chunk] == answer
            assert [t for chunk in batch.generate(second, config) for t in chunk] == expected
            reused = batch.prefix.reused_tokens
        finally:
            batch.close()
        assert (batch.prefix.hits, reused > len(first)) == ((0, False) if slots == 0 else (1, True))


def test_prompt_lookup_in_a_batch_is_lossless_and_used(engine):
    """Requests with prompt lookup (alone, or joined to a drafted tree) decode their plain greedy output in a
    packed batch, and the lookup branch is verified there: a random model's greedy text falls into cycles,
    which lookup predicts, so plain decoding with lookup accepts more than one token per pass."""
    cases = [
        {"speculative": False, "ngram": 8},
        {"ngram": 6},
        {"top_k": 2, "depth": 2, "total_tokens": 4, "ngram": 8},
    ]
    items = [
        (prompt, engine.default_config(max_new_tokens=60, **cases[i % len(cases)]))
        for i, prompt in enumerate(prompts(6, seed=11))
    ]
    plain = engine.default_config(max_new_tokens=60, speculative=False)
    expected = [alone(engine, prompt, plain) for prompt, _ in items]
    batch = BatchEngine(engine, max_batch=3, prefill_chunk=16, rows_per_pass=48)
    try:
        stats = [GenerationStats() for _ in items]
        assert concurrently(batch, items, stats) == expected
        assert max(s.acceptance_length for s in stats[:: len(cases)]) > 1.5
    finally:
        batch.close()
