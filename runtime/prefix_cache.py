"""Prefix cache for multi-turn chat: a finished request's KV-cache region stays, keyed by its tokens, so the
next turn (whose prompt starts with the previous prompt and answer) copies those rows instead of
prefilling them again. Bounded in cache slots, evicted least recently used."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Cached:
    """A finished sequence's region: rows [start, start + rows) of both caches hold tokens[:rows]."""

    tokens: tuple[int, ...]
    start: int
    size: int  # the region's slots (what it holds in `Regions`)
    rows: int  # rows reusable in both the target and the drafter cache


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self.entries: OrderedDict[int, Cached] = OrderedDict()  # by region start, least recent first
        self.hits = 0
        self.reused_tokens = 0

    @property
    def slots(self) -> int:
        return sum(e.size for e in self.entries.values())

    def lookup(self, prompt: list[int]) -> tuple[Cached | None, int]:
        """The entry sharing the longest prefix with `prompt`, and how many of its rows to reuse: one fewer
        than the shared tokens (drafter row t pairs the target's feature t with token t + 1, which must be
        shared too), and at most len(prompt) - 1 (the last prompt row must run to give the first logits)."""
        best, best_rows = None, 0
        for entry in self.entries.values():
            rows = min(common_prefix(entry.tokens, prompt) - 1, entry.rows, len(prompt) - 1)
            if rows > best_rows:
                best, best_rows = entry, rows
        if best is not None:
            self.entries.move_to_end(best.start)
        return best, best_rows

    def add(self, entry: Cached) -> list[Cached]:
        """Keeps `entry`; returns the entries to free: those it makes redundant (their tokens are a prefix
        of its own) and the least recently used beyond the slot budget (`entry` itself if it is too big)."""
        dropped = [
            e for e in self.entries.values() if common_prefix(e.tokens, list(entry.tokens)) == len(e.tokens)
        ]
        for e in dropped:
            del self.entries[e.start]
        self.entries[entry.start] = entry
        while self.entries and self.slots > self.max_slots:
            dropped.append(self.entries.popitem(last=False)[1])
        return dropped

    def evict_oldest(self) -> Cached | None:
        return self.entries.popitem(last=False)[1] if self.entries else None
