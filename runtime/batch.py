"""Continuous batching of speculative decoding: several sequences share each target and drafter pass.

onnxruntime's CPU GroupQueryAttention takes several new rows per sequence only at batch 1 ("batch_size
must be 1 when sequence_length > 1 and past context is given"), and a draft tree is several rows. So a pass
packs the rows of every sequence into one [1, S] call of the artifact's batch-1 graphs:

- one KV cache per graph; each sequence owns a region of slots [start, start + size) holding its committed
  context (`Regions`, runtime/scheduler.py);
- the pass's rows are written above every region, at scratch slots [top, top + S);
- the mask is block-diagonal: a row sees its own region's committed slots and its own segment's rows (tree
  ancestors, or causal prefill); RoPE positions are explicit, so a region anywhere in the cache holds the
  same sequence as slots 0.. would;
- after the pass each sequence's accepted rows move from scratch into its region (`GraphSession.move`).

A pass mixes draft trees (verification) with chunks of prompts (prefill), so a long prompt joins over
several passes without stalling the others. Acceptance is the pure functions of accept.py per sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from eaglex.runtime.accept import RowArgmax, accept_greedy, accept_sampling
from eaglex.runtime.backends.base import GraphSession
from eaglex.runtime.draft import EagleDrafter
from eaglex.runtime.generate import GenerationConfig, GenerationStats, _stop_at
from eaglex.runtime.sampling import probabilities, sample
from eaglex.runtime.tree import DraftTree, DraftTreeBuilder, chain_tree


@dataclass(eq=False)
class Sequence:
    """One request's decoding state. `start`/`size`: its region in both caches."""

    prompt: list[int]
    config: GenerationConfig
    start: int
    size: int
    budget: int  # new tokens it may emit: max_new_tokens, capped by the context limit as alone
    stats: GenerationStats = field(default_factory=GenerationStats)
    committed: int = 0  # target cache rows in the region (prompt rows, then accepted tree rows)
    drafted: int = 0  # drafter cache rows in the region
    generated: list[int] = field(default_factory=list)
    pending: tuple[np.ndarray, np.ndarray] | None = None  # drafter rows to commit: tokens, features
    last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # drafter top-k of its last row
    tree: DraftTree | None = None
    done: bool = False
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)
        self.stats.prompt_tokens = len(self.prompt)

    @property
    def prefilling(self) -> bool:
        return self.committed < len(self.prompt)


@dataclass
class Segment:
    """One sequence's rows in a packed pass: `mask` [n, n] is what they see of each other."""

    seq: Sequence
    tokens: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    region_rows: int  # how many committed slots of its region the rows see


@dataclass(frozen=True)
class Packed:
    """The inputs of one packed call: rows at slots [top, top + S); offsets[i] is segment i's first row."""

    tokens: np.ndarray
    positions: np.ndarray
    mask: np.ndarray  # bool [S, top + S]
    offsets: np.ndarray
    top: int


def pack(segments: list[Segment], top: int, scratch: np.ndarray | None = None) -> Packed:
    """Concatenates the segments' rows and builds the block-diagonal mask.

    Row r of segment i sees slots [start_i, start_i + region_rows_i) and the slots top + o_i + c where
    segment i's own mask allows column c. `scratch` [S, top] (optional) adds visible slots below top that
    are not in a region (the drafter's earlier tree levels)."""
    sizes = np.array([len(s.tokens) for s in segments])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rows = int(sizes.sum())
    mask = np.zeros((rows, top + rows), dtype=bool)
    if scratch is not None:
        mask[:, :top] = scratch
    for seg, offset in zip(segments, offsets, strict=True):
        n, start = len(seg.tokens), seg.seq.start
        mask[offset : offset + n, start : start + seg.region_rows] = True
        mask[offset : offset + n, top + offset : top + offset + n] = seg.mask
    return Packed(
        tokens=np.concatenate([s.tokens for s in segments]).astype(np.int64),
        positions=np.concatenate([s.positions for s in segments]).astype(np.int64),
        mask=mask,
        offsets=offsets,
        top=top,
    )


def verify_segment(seq: Sequence) -> Segment:
    """The draft tree of a decoding sequence (its root is the last emitted token)."""
    tree = seq.tree
    assert tree is not None
    return Segment(seq, tree.tokens, seq.committed + tree.depths, tree.attention_mask(), seq.committed)


def prefill_segment(seq: Sequence, rows: int) -> Segment:
    """The next `rows` prompt tokens of a prefilling sequence, causal among themselves."""
    a = seq.committed
    b = min(len(seq.prompt), a + rows)
    return Segment(seq, np.asarray(seq.prompt[a:b]), np.arange(a, b), np.tri(b - a, dtype=bool), a)


class PackedStep:
    """Runs the three kinds of packed calls of one step: drafter extension, drafter tree growth, and the
    target pass that verifies trees and prefills prompt chunks."""

    def __init__(self, target: GraphSession, drafter: EagleDrafter | None, stop_tokens: set[int]):
        self.target, self.drafter, self.stop_tokens = target, drafter, stop_tokens

    # The target pass --------------------------------------------------------------------------------

    def target_pass(self, segments: list[Segment], top: int) -> list[list[int]]:
        """Runs verification and prefill rows together; returns each segment's newly emitted tokens."""
        packed = pack(segments, top)
        feeds = {
            "input_ids": packed.tokens[None],
            "position_ids": packed.positions[None],
            "logit_index": np.arange(len(packed.tokens)),
        }
        out = self.target.run(feeds, top, packed.mask)
        logits, features = out["logits"][0], out["features"][0]
        emitted = []
        for seg, offset in zip(segments, packed.offsets, strict=True):
            n = len(seg.tokens)
            rows = slice(offset, offset + n)
            if seg.seq.tree is not None and not seg.seq.prefilling:
                emitted.append(self._accept(seg.seq, logits[rows], features[rows], top + offset))
            else:
                emitted.append(self._prefilled(seg.seq, n, logits[rows], features[rows], top + offset))
        return emitted

    def _prefilled(
        self, seq: Sequence, n: int, logits: np.ndarray, features: np.ndarray, first_slot: int
    ) -> list[int]:
        a = seq.committed
        self.target.move(first_slot + np.arange(n), seq.start + a + np.arange(n))
        seq.committed = a + n
        if seq.prefilling:
            seq.pending = _join(seq.pending, np.asarray(seq.prompt[a + 1 : a + n + 1]), features)
            return []
        config = seq.config
        last = logits[-1]
        root = int(last.argmax()) if config.temperature == 0 else sample(
            probabilities(last, config.temperature, config.top_p, config.sample_top_k), seq.rng
        )  # fmt: skip
        seq.generated = [root]
        seq.stats.prefill_seconds = time.perf_counter() - seq.started
        seq.pending = _join(seq.pending, np.asarray([*seq.prompt[a + 1 :], root]), features)
        self._finish_if_done(seq)
        return [root]

    def _accept(self, seq: Sequence, logits: np.ndarray, features: np.ndarray, first_slot: int) -> list[int]:
        tree, config = seq.tree, seq.config
        assert tree is not None
        if config.temperature == 0:
            path, bonus = accept_greedy(tree, RowArgmax(logits))
        else:
            path, bonus = accept_sampling(
                tree, logits, config.temperature, config.top_p, seq.rng, config.sample_top_k
            )
        room = seq.budget - len(seq.generated)
        new = _stop_at([*tree.tokens[path[1:]].tolist(), bonus], self.stop_tokens, room)
        seq.generated += new
        stats = seq.stats
        stats.target_passes += 1
        stats.verified_tokens += len(new)
        stats.accepted_lengths.append(len(new))
        seq.tree = None
        self._finish_if_done(seq)
        if not seq.done:
            self.target.move(first_slot + path, seq.start + seq.committed + np.arange(len(path)))
            seq.committed += len(path)
            seq.pending = (np.asarray(new, np.int64), features[path])
        return new

    def _finish_if_done(self, seq: Sequence) -> None:
        stats, generated = seq.stats, seq.generated
        if generated[-1] in self.stop_tokens:
            stats.stop_reason = "stop token"
        elif len(generated) >= seq.config.max_new_tokens:
            stats.stop_reason = "length"
        elif len(generated) >= seq.budget:
            stats.stop_reason = "context limit"
        else:
            return
        seq.done, seq.pending = True, None
        stats.new_tokens = len(generated)

    # The drafter ------------------------------------------------------------------------------------

    def extend(self, seqs: list[Sequence], top: int) -> None:
        """Commits every sequence's pending drafter rows in one call; the last row's top-k seeds its tree."""
        drafter = self.drafter
        seqs = [s for s in seqs if s.pending is not None]
        if drafter is None or not seqs:
            return
        segments = []
        for seq in seqs:
            tokens, _ = seq.pending  # type: ignore[misc]
            n = len(tokens)
            segments.append(
                Segment(seq, tokens, seq.drafted + np.arange(n), np.tri(n, dtype=bool), seq.drafted)
            )
        packed = pack(segments, top)
        features = np.concatenate([s.pending[1] for s in seqs])  # type: ignore[index]
        last_rows = packed.offsets + np.array([len(s.tokens) for s in segments]) - 1
        top_k = max(s.config.top_k for s in seqs)
        out = self._draft(packed, features[None], drafter.no_hidden, last_rows, top_k)
        for i, (seq, offset) in enumerate(zip(seqs, packed.offsets, strict=True)):
            n = len(seq.pending[0])  # type: ignore[index]
            drafter.session.move(top + offset + np.arange(n), seq.start + seq.drafted + np.arange(n))
            seq.drafted += n
            seq.pending = None
            seq.last = (out["topk_logprobs"][0, i : i + 1], out["topk_ids"][0, i : i + 1],
                        out["hidden_out"][0, last_rows[i] : last_rows[i] + 1])  # fmt: skip

    def grow(self, seqs: list[Sequence], sizes: list[int], top: int, room: int) -> None:
        """Gives every sequence a draft tree of sizes[i] nodes (1: its root alone, no drafter call).

        Tree levels of all sequences share each drafter call; a level's rows stay in the scratch slots
        above `top` (at most `room` of them) for the deeper levels to attend to."""
        growing: list[tuple[Sequence, DraftTreeBuilder, np.ndarray, np.ndarray, list[int]]] = []
        builders: dict[int, DraftTreeBuilder] = {}
        for i, (seq, size) in enumerate(zip(seqs, sizes, strict=True)):
            root, k = seq.generated[-1], seq.config.top_k
            if self.drafter is None or size <= 1 or seq.last is None:
                seq.tree = chain_tree([root])
                continue
            logprobs, ids, hidden = seq.last
            builder = builders[i] = DraftTreeBuilder(root, k)
            tokens, parents = builder.add_level(logprobs[:, :k], ids[:, :k])
            growing.append((seq, builder, tokens, hidden[parents], []))
        used, level = 0, 2
        # A sequence stops at its depth, or earlier where its tree is not worth growing (its config's cut).
        while growing := [
            g
            for g in growing
            if level <= g[0].config.depth and g[1].worth_growing(g[0].config.min_grow_probability)
        ]:
            rows = sum(len(g[2]) for g in growing)
            if used + rows > room:
                break  # scratch full: the trees stay shallower (acceptance is unaffected)
            self._level(growing, top, used, level)
            used, level = used + rows, level + 1
        for i, seq in enumerate(seqs):
            if i in builders:
                seq.tree = builders[i].build(sizes[i], min_path_probability=seq.config.min_path_probability)

    def _level(self, growing: list, top: int, used: int, level: int) -> None:
        """One drafter call over every growing sequence's frontier; updates the entries in place."""
        drafter = self.drafter
        assert drafter is not None
        base = top + used  # this level's rows go here; earlier levels' rows are below, from top
        segments, scratch_rows = [], []
        for seq, builder, tokens, _, slots in growing:
            n = len(tokens)
            own = builder.scratch_mask()  # [n, previous slots + n]: ancestors' rows and its own
            segments.append(
                Segment(seq, tokens, np.full(n, seq.drafted + level - 2), own[:, -n:], seq.drafted)
            )
            visible = np.zeros((n, base), dtype=bool)
            visible[:, slots] = own[:, : len(slots)]
            scratch_rows.append(visible)
        packed = pack(segments, base, np.concatenate(scratch_rows))
        hidden = np.concatenate([g[3] for g in growing])[None]
        top_k = max(g[0].config.top_k for g in growing)
        out = self._draft(packed, drafter.no_features, hidden, np.arange(len(packed.tokens)), top_k)
        for j, (entry, offset) in enumerate(zip(growing, packed.offsets, strict=True)):
            seq, builder, tokens, _, slots = entry
            n, k = len(tokens), seq.config.top_k
            rows = slice(offset, offset + n)
            new_tokens, parents = builder.add_level(
                out["topk_logprobs"][0, rows, :k], out["topk_ids"][0, rows, :k]
            )
            slots += (base + offset + np.arange(n)).tolist()
            growing[j] = (seq, builder, new_tokens, out["hidden_out"][0, rows][parents], slots)

    def _draft(
        self, packed: Packed, features: np.ndarray, hidden: np.ndarray, logit_rows: np.ndarray, top_k: int
    ) -> dict[str, np.ndarray]:
        drafter = self.drafter
        assert drafter is not None
        drafter.calls += 1
        feeds = {
            "input_embeds": np.asarray(drafter.embeddings[packed.tokens], np.float32)[None],
            "features": features,
            "hidden": hidden,
            "position_ids": packed.positions[None],
            "logit_index": logit_rows,
            "top_k": np.array([top_k], np.int64),
        }
        return drafter.session.run(feeds, packed.top, packed.mask)


def _join(
    pending: tuple[np.ndarray, np.ndarray] | None, tokens: np.ndarray, features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Appends drafter rows to a sequence's pending ones (prefill chunks queue theirs until extended)."""
    if pending is None:
        return np.asarray(tokens, np.int64), features
    return np.concatenate([pending[0], tokens]).astype(np.int64), np.concatenate([pending[1], features])
