"""Batched answers from a Hugging Face target, greedy or sampled: the decoding under answer regeneration
(regenerate.py) and self-written requests (selfprompts.py).

Stopped rows leave the batch, and the KV cache is reserved for the whole batch up front and written in
place (`ReservedLayer`), so a step costs what its live rows do and never copies the cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .kernels import planless_attention

# Prompts a CPU prefills at once. A whole batch's activations (rows x prompt length x 1,536 in SmolLM2's MLP)
# outgrow the CPU's caches: two batches of 256 prompts (~40 and ~110 tokens) prefilled in 17.1 s whole and
# 10.1 s in pieces of 16 (bf16, two threads, an Intel Xeon with AMX; experiments/compare_regen_prefill.py).
# A GPU takes the batch whole.
PREFILL_ROWS = 16


def greedy_answers(
    model: nn.Module,
    prompts: list[list[int]],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    evict_share: float = 0.0,
    prefill_rows: int | None = None,
) -> list[list[int]]:
    """Greedy answers to a batch of prompt ids, each up to and including its first stop token, computed on
    the device the model's weights are on.

    Stopped rows leave the batch with their KV-cache rows: answers end at very different lengths (a batch
    of 64 used ~60% of its rows x steps when every row ran to the longest answer), and a decode step costs
    what its live rows do. Removing rows copies the whole cache; `evict_share` > 0 waits until that share
    of the rows have stopped, stopped rows running on until then (slower here: BENCHMARKS.md).
    `prefill_rows`: prompts run through the model at once (default: PREFILL_ROWS on a CPU, all on a GPU)."""
    return _answers(
        model, prompts, stop_ids, max_new_tokens, evict_share, lambda logits: logits.argmax(-1), prefill_rows
    )


def sampled_answers(
    model: nn.Module,
    prompts: list[list[int]],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[list[int]]:
    """Like greedy_answers, but each token drawn from the target's distribution (temperature 1) with
    `generator` (on the model's device), so a batch is reproducible from its seed."""

    def draw(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _answers(model, prompts, stop_ids, max_new_tokens, 0.0, draw, None)


def _answers(
    model: nn.Module,
    prompts: list[list[int]],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    evict_share: float,
    choose: Callable[[torch.Tensor], torch.Tensor],
    prefill_rows: int | None,
) -> list[list[int]]:
    pad = stop_ids[0]
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    # Left padding, so every prompt ends where generation starts.
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    stops = torch.tensor(list(stop_ids), device=device)
    rows = torch.arange(len(prompts), device=device)  # the prompt each batch row answers
    stopped = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    answers: list[list[int]] = [[] for _ in prompts]
    # transformers renamed the argument `past_key_values` to `cache` (the old name goes in 5.40).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if prefill_rows is None:
        prefill_rows = len(prompts) if device.type == "cuda" else PREFILL_ROWS
    with torch.no_grad(), planless_attention():
        logits, cache = _prefill(model, ids, mask, width + max_new_tokens, cache_arg, prefill_rows)
        for step in range(max_new_tokens):
            tokens = choose(logits)
            for row, token, done in zip(rows.tolist(), tokens.tolist(), stopped.tolist(), strict=True):
                if not done:
                    answers[row].append(token)
            stopped |= torch.isin(tokens, stops)
            if stopped.all() or step == max_new_tokens - 1:
                break
            if stopped.sum() > evict_share * len(stopped):
                order = _fill_holes(stopped.tolist())
                for layer in cache.layers:
                    layer.keep_rows(order)
                index = torch.tensor(order, device=device)
                rows, tokens, mask, stopped = rows[index], tokens[index], mask[index], stopped[index]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                use_cache=True,
                **{cache_arg: cache},
            ).logits[:, -1]
    return answers


def _prefill(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, capacity: int, cache_arg: str, rows_per_call: int
) -> tuple[torch.Tensor, Cache]:
    """The logits after each (left-padded) prompt, and a cache of `capacity` positions a row that holds the
    prompts' keys and values.

    The prompts run `rows_per_call` at a time (PREFILL_ROWS on a CPU), each piece with a cache of its own
    that goes into the batch's as soon as the piece is done: holding every piece until the end kept a second
    copy of the batch's cache (~3 GB at BATCH_TOKENS in bf16) and left a worker at twice the memory it
    needs (experiments/measure_regen_memory.py)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, cache = [], None
    for start in range(0, len(ids), rows_per_call):
        piece = slice(start, start + rows_per_call)
        piece_cache = DynamicCache()
        out = model(
            input_ids=ids[piece],
            attention_mask=mask[piece],
            position_ids=positions[piece],
            use_cache=True,
            logits_to_keep=1,  # the prompt's other positions need none (49k-wide each)
            **{cache_arg: piece_cache},
        )
        logits.append(out.logits[:, -1])
        if cache is None:
            cache = Cache(layers=[ReservedLayer(len(ids), capacity) for _ in piece_cache.layers])
        for layer, part in zip(cache.layers, piece_cache.layers, strict=True):
            layer.write_rows(start, part.keys, part.values)
    return torch.cat(logits), cache


def _fill_holes(stopped: list[bool]) -> list[int]:
    """The rows to keep, as the old row of each new one: live rows past the new end move into the places of
    stopped rows before it, so the fewest rows are copied and no copy overwrites a row still to be read."""
    kept = len(stopped) - sum(stopped)
    order = list(range(kept))
    movers = [row for row in range(kept, len(stopped)) if not stopped[row]]
    holes = [row for row in range(kept) if stopped[row]]
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return order


class ReservedLayer(DynamicLayer):
    """One layer's KV cache in buffers reserved for a whole batch's answers, written in place.

    DynamicLayer grows by torch.cat, which copies the whole cache at every decoding step, into fresh memory
    once a layer's cache passes glibc's 32 MB mmap limit. Here each step writes only its new token, and
    removing stopped rows moves only the rows that fill their places (`keep_rows`). On 64 second-turn
    prompts of SmolLM2 in bf16 on these CPUs: 159 against 141 generated tokens/s, the same answers
    (docs/BENCHMARKS.md, History, bfloat16 in training); the decode step is then bound by reading the cache in
    attention."""

    def __init__(self, rows: int, capacity: int) -> None:
        super().__init__()
        self.batch_rows, self.capacity, self.length, self.rows = rows, capacity, 0, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        _, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty(self.batch_rows, heads, self.capacity, dim)
        self.value_buffer = value_states.new_empty(
            self.batch_rows, heads, self.capacity, value_states.shape[-1]
        )
        self.is_initialized = True

    def write_rows(self, first: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Writes one prefill piece, the prompts of rows first.., at positions 0..: every piece of a
        (left-padded) prefill has the same length."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end, self.length = first + key_states.shape[0], key_states.shape[-2]
        self.key_buffer[first:end, :, : self.length] = key_states
        self.value_buffer[first:end, :, : self.length] = value_states
        self.rows = max(self.rows, end)
        self.keys = self.key_buffer[: self.rows, :, : self.length]
        self.values = self.value_buffer[: self.rows, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.rows, start = key_states.shape[0], self.length
        self.length += key_states.shape[-2]
        self.key_buffer[: self.rows, :, start : self.length] = key_states
        self.value_buffer[: self.rows, :, start : self.length] = value_states
        self.keys = self.key_buffer[: self.rows, :, : self.length]
        self.values = self.value_buffer[: self.rows, :, : self.length]
        return self.keys, self.values

    def keep_rows(self, order: list[int]) -> None:
        """Keeps rows `order` (old row of each new one, from `_fill_holes`) as rows 0..len(order)-1."""
        for new, old in enumerate(order):
            if new != old:
                self.key_buffer[new, :, : self.length] = self.key_buffer[old, :, : self.length]
                self.value_buffer[new, :, : self.length] = self.value_buffer[old, :, : self.length]
        self.rows = len(order)
        self.keys = self.key_buffer[: self.rows, :, : self.length]
        self.values = self.value_buffer[: self.rows, :, : self.length]
