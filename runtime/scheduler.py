"""Serving many requests from one Engine: a bounded queue, admission into KV-cache regions, and a worker
thread that runs packed steps (runtime/batch.py) while requests join and leave between them.

Each step: admit waiting requests whose region fits (first come, first served, like vLLM's scheduler
without preemption), drop cancelled ones, commit drafter rows, grow every decoding sequence's tree (the one
`eaglex tune` picked for this batch size, runtime/batch_trees.py, or plain decoding; never over the pass's
share of `rows_per_pass`: rows are a budget shared by speculation and batching), then one target
pass over all trees plus prompt chunks up to `prefill_chunk` rows. Tokens go to each request's sink as soon
as its pass accepts them. Thread-safe: `submit` from any thread, `stream` from any asyncio loop.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from eaglex.errors import EaglexError
from eaglex.runtime.batch import PackedStep, Sequence, prefill_segment, verify_segment
from eaglex.runtime.batch_trees import follow, graft_lookups, tree_sizes, tuned_tree
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats
from eaglex.runtime.prefix_cache import Cached, PrefixCache


class QueueFull(EaglexError):
    """The bounded queue of waiting requests is full: retry later (the server answers 503)."""


class Regions:
    """First-fit allocation of contiguous cache slots below `limit`; `top` is the end of the highest region
    (a packed pass writes its rows from there)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used: list[tuple[int, int]] = []  # (start, size), sorted by start

    def allocate(self, size: int) -> int | None:
        start = 0
        for used_start, used_size in self.used:
            if used_start - start >= size:
                break
            start = used_start + used_size
        if start + size > self.limit:
            return None
        bisect.insort(self.used, (start, size))
        return start

    def free(self, start: int, size: int) -> None:
        self.used.remove((start, size))

    def shrink(self, start: int, size: int, new_size: int) -> None:
        self.used[self.used.index((start, size))] = (start, new_size)

    @property
    def top(self) -> int:
        return max((s + n for s, n in self.used), default=0)


@dataclass(eq=False)
class Request:
    """A submitted request: tokens arrive through `sink(tokens, stats_or_error)`; `stats` is passed (and
    `tokens` empty) once when it ends, an EaglexError instead if it failed."""

    prompt: list[int]
    config: GenerationConfig
    sink: Callable[[list[int], GenerationStats | Exception | None], None]
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    seq: Sequence | None = None

    def cancel(self) -> None:
        self.cancelled = True  # the worker frees its slot before its next pass


@dataclass
class Metrics:
    """Counters for /metrics (read without the lock: each is one attribute, updated by the worker)."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    rejected: int = 0
    tokens: int = 0
    passes: int = 0
    sequence_passes: int = 0  # decoding sequences summed over passes
    verified: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    batch: int = 0  # sequences in the last pass
    tree_nodes: float = 0.0  # nodes verified per decoding sequence in the last pass (1: plain decoding)
    busy_seconds: float = 0.0  # time spent in steps
    started: float = field(default_factory=time.perf_counter)


class BatchEngine:
    """Runs an Engine's graphs for many requests at once. Holds the Engine for its whole life (plain
    `Engine.generate` is refused meanwhile), until `close`."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: int = 64,
        rows_per_pass: int = 64,
        prefix_cache: int | None = None,
    ):
        """prefix_cache: cache slots kept for finished requests' prefixes (runtime/prefix_cache.py; default
        a quarter of the regions' slots, 0 = off). Cached regions sit below the passes' rows, so they
        widen every pass's attention a little: the budget trades that against prefills saved."""
        if engine.manifest.backend != "onnxruntime" or not hasattr(engine.target, "move"):
            raise EaglexError("batched serving runs the onnxruntime flavour of an artifact on onnxruntime")
        if min(max_batch, max_queue, prefill_chunk, rows_per_pass) < 1:
            raise EaglexError("max_batch, max_queue, prefill_chunk and rows_per_pass must be at least 1")
        if not engine._busy.acquire(blocking=False):
            raise EaglexError(Engine.BUSY)
        self.engine = engine
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefill_chunk, self.rows_per_pass = prefill_chunk, rows_per_pass
        self.trees = engine.manifest.tree.by_batch  # tuned per batch size (eaglex tune); may be empty
        self.step_runner = PackedStep(engine.target, engine.drafter, engine.stop_tokens)
        capacity = engine.target.capacity
        if engine.drafter is not None:
            capacity = min(capacity, engine.drafter.session.capacity)
        # Scratch rows above the regions, for a target pass: trees (at least a root each, `tree_sizes`) and a
        # prompt chunk. The drafter's deeper tree levels use what is left and stop growing when it is full.
        self.scratch = max(rows_per_pass, max_batch) + prefill_chunk
        if capacity - self.scratch < 2:
            raise EaglexError(
                f"the artifact's context of {capacity} leaves no room for {max_batch} sequences' trees and "
                "prompt chunks: lower --max-batch or re-export with a larger --max-context"
            )
        self.capacity = capacity
        self.regions = Regions(capacity - self.scratch)
        self.prefix = PrefixCache(self.regions.limit // 4 if prefix_cache is None else prefix_cache)
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        self.metrics = Metrics()
        self._lock = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="eaglex-batch", daemon=True)
        self._worker.start()

    @property
    def context_limit(self) -> int:
        """The most prompt plus new tokens one request may hold."""
        return self.regions.limit

    # Submitting -------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        config: GenerationConfig,
        sink: Callable[[list[int], GenerationStats | Exception | None], None],
    ) -> Request:
        """Queues a request; raises EaglexError for bad settings and QueueFull when the queue is full."""
        self.engine.check(prompt, config)
        if len(prompt) + 1 > self.context_limit:
            raise EaglexError(
                f"the prompt has {len(prompt)} tokens but this server holds at most {self.context_limit} "
                "tokens per request (prompt plus new tokens): shorten the prompt"
            )
        request = Request(prompt, config, sink)
        with self._lock:
            if self._closed:
                raise EaglexError("the batch engine is closed")
            if len(self.waiting) >= self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"the queue of {self.max_queue} waiting requests is full: retry later")
            self.waiting.append(request)
            self.metrics.requests += 1
            self._lock.notify()
        return request

    def generate(self, prompt: list[int], config: GenerationConfig, stats: GenerationStats | None = None):
        """Blocking iterator over token lists, as Engine.generate, safe from any number of threads."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        request = self.submit(prompt, config, lambda tokens, end: inbox.put((tokens, end)))
        return _drain(inbox, request, stats)

    def stream(
        self, prompt: list[int], config: GenerationConfig, stats: GenerationStats | None = None
    ) -> AsyncIterator[list[int]]:
        """`async for tokens in engine.stream(...)` inside an asyncio loop: token lists as passes accept
        them. Submits at once (so QueueFull and bad settings raise here, before any iteration); closing the
        iterator early, or cancelling its task, cancels the request and frees its slot."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def sink(tokens: list[int], end: GenerationStats | Exception | None) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, (tokens, end))
            except RuntimeError:  # the loop is closed: nobody reads this request any more
                request.cancel()

        request = self.submit(prompt, config, sink)
        return _stream(inbox, request, stats)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def close(self) -> None:
        """Stops the worker after its current pass, fails what is left, and gives the Engine back."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._worker.join()
        for request in [*self.active, *self.waiting]:
            request.sink([], EaglexError("the server is shutting down"))
        self.active, self.waiting = [], collections.deque()
        self.engine._busy.release()

    # The worker -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self.waiting and not self.active:
                    self._lock.wait()
                if self._closed:
                    return
                self._admit()
            try:
                self._step()
            except Exception as e:  # a failed pass fails its requests, never the server
                error = e if isinstance(e, EaglexError) else EaglexError(f"generation failed: {e}")
                for request in self.active:
                    self._release(request)
                    request.sink([], error)
                self.active = []

    def _admit(self) -> None:
        """Moves waiting requests into the batch while a slot and a region are free (in arrival order)."""
        while self.waiting and len(self.active) < self.max_batch:
            request = self.waiting[0]
            if request.cancelled:
                self.waiting.popleft()
                self.metrics.cancelled += 1
                continue
            n = len(request.prompt)
            budget = min(
                request.config.max_new_tokens, self.engine.target.capacity - n, self.context_limit - n
            )
            while (start := self.regions.allocate(n + budget)) is None and (
                old := self.prefix.evict_oldest()
            ):
                self.regions.free(old.start, old.size)  # running requests come before cached prefixes
            if start is None:
                return  # the oldest request waits for room; later ones do not overtake it
            self.waiting.popleft()
            seq = request.seq = Sequence(request.prompt, request.config, start, n + budget, budget)
            seq.started = request.submitted
            self._reuse_prefix(seq)
            self.active.append(request)

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Copies the longest cached prefix of the prompt into the new region: its prefill starts there."""
        entry, rows = self.prefix.lookup(seq.prompt)
        if entry is None or rows < 1:
            return
        source, destination = entry.start + np.arange(rows), seq.start + np.arange(rows)
        self.engine.target.move(source, destination)
        if self.engine.drafter is not None:
            self.engine.drafter.session.move(source, destination)
        seq.committed = seq.drafted = rows
        self.prefix.hits += 1
        self.prefix.reused_tokens += rows

    def _retire(self, request: Request) -> None:
        """A finished request's region goes to the prefix cache (shrunk to its reusable rows)."""
        seq = request.seq
        assert seq is not None
        rows = min(seq.committed, seq.drafted if self.engine.drafter is not None else seq.committed)
        if not self.prefix.max_slots or rows < 2 or rows > self.prefix.max_slots:
            self._release(request)
            return
        self.regions.shrink(seq.start, seq.size, rows)
        tokens = tuple([*seq.prompt, *seq.generated][:rows])
        for old in self.prefix.add(Cached(tokens, seq.start, rows, rows)):
            self.regions.free(old.start, old.size)

    def _release(self, request: Request) -> None:
        assert request.seq is not None
        self.regions.free(request.seq.start, request.seq.size)

    def _step(self) -> None:
        for request in [r for r in self.active if r.cancelled]:
            self._release(request)
            self.active.remove(request)
            self.metrics.cancelled += 1
        if not self.active:
            return
        seqs = [r.seq for r in self.active]
        top, runner = self.regions.top, self.step_runner
        clock = time.perf_counter()
        decoding = [s for s in seqs if not s.prefilling]
        self._follow_tuned_trees(len(decoding))  # before extend: its top-k seeds the trees
        runner.extend(seqs, top)
        sizes = tree_sizes(decoding, self.rows_per_pass)
        runner.grow(decoding, sizes, top, self.capacity - top)
        graft_lookups(decoding, self.rows_per_pass)
        self.metrics.tree_nodes = sum(len(s.tree) for s in decoding) / len(decoding) if decoding else 0.0
        drafted = time.perf_counter()
        segments = [verify_segment(s) for s in decoding]
        chunk = self.prefill_chunk
        for seq in (s for s in seqs if s.prefilling):
            if chunk > 0:
                segments.append(prefill_segment(seq, chunk))
                chunk -= len(segments[-1].tokens)
        emitted = runner.target_pass(segments, top)
        done = time.perf_counter()
        self.metrics.busy_seconds += done - clock
        for seq in decoding:
            seq.stats.draft_seconds += drafted - clock
            seq.stats.verify_seconds += done - drafted
            seq.stats.decode_seconds += done - clock
        self._deliver(segments, emitted, len(decoding))

    def _follow_tuned_trees(self, batch: int) -> None:
        """Decoding sequences whose request names no tree of its own take the one tuned for this batch size
        (`tree_sizes` still cuts it to the pass's row budget); the others keep their own settings."""
        tuned = tuned_tree(self.trees, batch)
        for request in self.active:
            seq = request.seq
            if tuned is not None and request.config.adaptive_tree and not seq.prefilling:
                seq.config = follow(request.config, tuned)

    def _deliver(self, segments: list, emitted: list[list[int]], decoding: int) -> None:
        metrics = self.metrics
        metrics.passes += 1
        metrics.batch = len(segments)
        metrics.sequence_passes += decoding
        by_seq = {id(seg.seq): tokens for seg, tokens in zip(segments, emitted, strict=True)}
        for request in list(self.active):
            seq = request.seq
            tokens = by_seq.get(id(seq), [])
            if tokens and len(seq.generated) == len(tokens):  # its first token
                metrics.ttft_sum += time.perf_counter() - request.submitted
                metrics.ttft_count += 1
            elif tokens:
                metrics.verified += len(tokens)
            metrics.tokens += len(tokens)
            if tokens:
                request.sink(tokens, None)
            if seq.done:
                self._retire(request)
                self.active.remove(request)
                metrics.finished += 1
                request.sink([], seq.stats)


def _finish(end: GenerationStats | Exception, stats: GenerationStats | None) -> None:
    if isinstance(end, Exception):
        raise end
    if stats is not None:
        stats.__dict__.update(end.__dict__)


async def _stream(
    inbox: asyncio.Queue, request: Request, stats: GenerationStats | None
) -> AsyncIterator[list[int]]:
    try:
        while True:
            tokens, end = await inbox.get()
            if tokens:
                yield tokens
            if end is not None:
                _finish(end, stats)
                return
    finally:
        request.cancel()


def _drain(inbox: queue.SimpleQueue, request: Request, stats: GenerationStats | None) -> Iterator[list[int]]:
    try:
        while True:
            tokens, end = inbox.get()
            if tokens:
                yield tokens
            if end is not None:
                _finish(end, stats)
                return
    finally:
        request.cancel()
