"""The frozen target's view of each training sequence, computed once and cached on disk in fp16 (or, with
LiveFeatures, computed for each batch as training asks for it).

Per token the cache holds: the three feature layers' input residual stream (pre-norm, what the runtime's
`features` output gives the drafter), the final normed hidden (the teacher's logits over the draft
vocabulary are `lm_head` rows times it, recomputed exactly at training time instead of storing 49k-wide
logits) and the target's argmax over its full vocabulary (the teacher counts only where that argmax has a
draft id). Epochs then cost only drafter passes. The cache is append-only and resumable: `meta.json`
records what is complete (each sequence's length and hash), and anything written after it is cut off on
reopening. It also grows: a data set that adds sequences to the stored ones computes only the new ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from eaglex.errors import EaglexError

from .data import Sample
from .kernels import planless_attention
from .progress import Progress

FP16_MAX = 65504.0  # residual streams carry a few huge activations (~25k in SmolLM2); clip, never overflow


@dataclass
class Batch:
    """Right-padded training sequences [B, N]; rows past a sequence's length are padding."""

    ids: Tensor  # int64
    loss_mask: Tensor  # bool: the token is part of an assistant turn
    lengths: Tensor  # int64 [B]
    features: Tensor  # float32 [B, N, 3H]
    final_hidden: Tensor  # float32 [B, N, H], the target's normed last hidden
    argmax: Tensor  # int64: the target's greedy next token at each position

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


class FeatureStore:
    """Flat per-token arrays for a list of sequences, one file each, plus `meta.json` (lengths so far)."""

    def __init__(self, folder: str | Path, hidden_size: int, num_feature_layers: int = 3) -> None:
        self.folder = Path(folder)
        self.widths = {
            "ids": (np.int32, 1),
            "loss_mask": (np.uint8, 1),
            "argmax": (np.int32, 1),
            "features": (np.float16, num_feature_layers * hidden_size),
            "final_hidden": (np.float16, hidden_size),
        }
        path = self.folder / "meta.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if meta and "hashes" not in meta:
            raise EaglexError(f"{self.folder} was written by an older eaglex: delete it to recompute it")
        self.lengths: list[int] = meta.get("lengths", [])
        # What each stored sequence is, so that a store is only ever reused or grown for the same sequences.
        self.hashes: list[str] = meta.get("hashes", [])
        # The precision the target ran in for each sequence (stores from before this was recorded: fp32).
        self.dtypes: list[str] = meta.get("dtypes", ["float32"] * len(self.lengths))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.bin"

    def append(self, arrays: Sequence[dict[str, np.ndarray]], target_dtype: str = "float32") -> None:
        """Adds whole sequences the target computed in `target_dtype`, then records them in meta.json: an
        interrupted write is never counted."""
        hashes = [sequence_hash(sequence["ids"], sequence["loss_mask"]) for sequence in arrays]
        self.folder.mkdir(parents=True, exist_ok=True)
        complete = self.num_tokens
        for name, (dtype, width) in self.widths.items():
            with open(self._path(name), "ab") as f:
                f.truncate(complete * width * np.dtype(dtype).itemsize)  # drop an interrupted tail
                for sequence in arrays:
                    f.write(np.ascontiguousarray(sequence[name], dtype=dtype).tobytes())
                f.flush()
                os.fsync(f.fileno())
        self.lengths += [len(sequence["ids"]) for sequence in arrays]
        self.hashes += hashes
        self.dtypes += [target_dtype] * len(arrays)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps({"lengths": self.lengths, "hashes": self.hashes, "dtypes": self.dtypes}))
        tmp.replace(self.folder / "meta.json")
        self._maps.clear()

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            dtype, width = self.widths[name]
            shape = (self.num_tokens, width)
            self._maps[name] = np.memmap(self._path(name), dtype=dtype, mode="r", shape=shape)
        return self._maps[name]

    def column(self, name: str) -> np.ndarray:
        """One array over every stored token, [tokens] or [tokens, width] (memory-mapped)."""
        array = self._map(name)
        return array[:, 0] if array.shape[1] == 1 else array

    def batch(self, indices: Sequence[int]) -> Batch:
        """Sequences `indices`, right-padded to the longest, as fp32/int64 tensors."""
        lengths = [self.lengths[i] for i in indices]
        rows = max(lengths)

        def stack(name: str, dtype: np.dtype) -> Tensor:
            source = self._map(name)
            out = np.zeros((len(indices), rows, source.shape[1]), dtype=dtype)
            for b, i in enumerate(indices):
                out[b, : lengths[b]] = source[self.offsets[i] : self.offsets[i + 1]]
            return torch.from_numpy(out if source.shape[1] > 1 else out[..., 0])

        return Batch(
            ids=stack("ids", np.int64),
            loss_mask=stack("loss_mask", np.bool_),
            lengths=torch.tensor(lengths),
            features=stack("features", np.float32),
            final_hidden=stack("final_hidden", np.float32),
            argmax=stack("argmax", np.int64),
        )


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of the length-sorted indices whose padded size (count x longest) fits batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class TargetFeatures:
    """Runs the frozen Hugging Face target and captures the residual stream *before* each feature layer
    with forward pre-hooks (unambiguous across transformers versions, unlike `output_hidden_states`).

    With dtype bfloat16 the target's matrix products run under bf16 autocast (norms and the residual sum
    stay fp32): ~1.8x faster on CPUs with AVX512-BF16 or AMX. The products' weights are cast to bf16 once,
    in a copy of the model, instead of by autocast at every call: the same products, bit for bit, in ~0.8x
    the time on an AMX Xeon (docs/BENCHMARKS.md, History, bfloat16 in training). The target runs on the
    device its weights are on; results come back to the CPU for the store.
    """

    def __init__(self, model: nn.Module, feature_layers: Sequence[int], dtype: str = "float32") -> None:
        self.dtype = dtype
        self.model = (_with_bf16_linears(model) if dtype == "bfloat16" else model).eval()
        self.device = next(self.model.parameters()).device
        self.decoder = self.model.get_decoder()
        self.lm_head = self.model.get_output_embeddings()
        self.feature_layers = tuple(feature_layers)
        self.captured: dict[int, Tensor] = {}
        for i in self.feature_layers:
            self.decoder.layers[i].register_forward_pre_hook(self._capture(i), with_kwargs=True)

    def _capture(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            del module
            self.captured[layer] = args[0] if args else kwargs["hidden_states"]

        return hook

    @torch.no_grad()
    def __call__(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids [B, S], right-padded -> features [B, S, 3H], final hidden [B, S, H], argmax [B, S].

        No attention mask is needed: with padding only at the end, causal attention keeps every real row
        from seeing it.
        """
        bf16 = self.dtype == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16), planless_attention():
            final = self.decoder(input_ids=ids.to(self.device)).last_hidden_state
            features = torch.cat([self.captured[i].float() for i in self.feature_layers], dim=-1)
            self.captured.clear()
            # Full-vocabulary logits in row chunks: [4096, 49152] fp32 at once would be 800 MB. max's indices
            # are argmax's (the first maximum), ~3x faster over bf16 logits on CPUs.
            flat = final.flatten(0, 1)
            argmax = torch.cat([self.lm_head(rows).max(-1).indices for rows in flat.split(512)])
            argmax = argmax.view(ids.shape)
        return features.cpu(), final.float().cpu(), argmax.cpu()


def _with_bf16_linears(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` whose linear layers hold bf16 weights; embeddings and norms stay as they
    are. Under bf16 autocast its products are exactly the original's: autocast casts an fp32 weight to the
    very same bf16 values, and leaves a bf16 one alone."""
    model = copy.deepcopy(model).requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            # A new parameter, not a cast in place: a tied lm_head shares its weight with the fp32 embedding.
            module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
    return model


class LiveFeatures:
    """The target's view of training sequences computed when a batch is asked for, never stored: the
    reading side of FeatureStore (lengths, columns of ids and loss masks, batches) over samples in memory.

    Each step then pays one target pass besides the drafter's (every epoch again), but a run needs no
    disk for features (~4.6 KB a token: 43 GB for 9.3 M tokens) and resumes from its checkpoint alone,
    on any machine. Features and final hidden are rounded to fp16 as the store rounds them, so a batch
    holds what a cached one would, up to the rounding of the target's batch shape."""

    def __init__(self, target: TargetFeatures, samples: Sequence[Sample]) -> None:
        self.target, self.samples = target, list(samples)
        self.lengths = [len(s.ids) for s in self.samples]
        self.dtypes = [target.dtype] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def column(self, name: str) -> np.ndarray:
        """ids or loss_mask over every token, in order (what the draft vocabulary is counted from)."""
        if name not in ("ids", "loss_mask"):
            raise KeyError(f"{name} is computed per batch, not kept")
        return np.concatenate([np.asarray(getattr(s, name), dtype=np.int32) for s in self.samples])

    def batch(self, indices: Sequence[int]) -> Batch:
        chosen = [self.samples[i] for i in indices]
        ids = nn.utils.rnn.pad_sequence([torch.tensor(s.ids) for s in chosen], batch_first=True)
        masks = [torch.tensor(s.loss_mask, dtype=torch.bool) for s in chosen]
        features, final, argmax = self.target(ids)
        lengths = torch.tensor([self.lengths[i] for i in indices])
        padding = torch.arange(ids.shape[1]) >= lengths[:, None]
        return Batch(
            ids=ids,  # padded with 0, as in the store
            loss_mask=nn.utils.rnn.pad_sequence(masks, batch_first=True),
            lengths=lengths,
            features=_fp16(features).float().masked_fill(padding[..., None], 0.0),
            final_hidden=_fp16(final).float().masked_fill(padding[..., None], 0.0),
            argmax=argmax.masked_fill(padding, 0),
        )


def sequence_hash(ids: Sequence[int] | np.ndarray, loss_mask: Sequence[bool] | np.ndarray) -> str:
    """Identifies a training sequence by its tokens and which of them are trained on."""
    data = np.asarray(ids, dtype=np.int32).tobytes() + np.asarray(loss_mask, dtype=np.uint8).tobytes()
    return hashlib.sha256(data).hexdigest()[:24]


def _fp16(x: Tensor) -> Tensor:
    """x as the store keeps it: clipped and rounded to fp16."""
    return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def extract(
    target: TargetFeatures,
    samples: Sequence[Sample],
    store: FeatureStore,
    batch_tokens: int,
    report: Callable[[str], None],
    what: str = "target features",
) -> None:
    """Appends the target view of every sample `store` does not hold yet (in length order), so a rerun
    resumes and a larger data set adds only its new sequences; the store then holds exactly `samples`,
    in its own order."""
    keys = [sequence_hash(s.ids, s.loss_mask) for s in samples]
    stored = Counter(store.hashes)
    if stored - Counter(keys):
        raise EaglexError(f"{store.folder} holds other sequences: delete it or use another --work-dir")
    todo = []
    for sample, key in zip(samples, keys, strict=True):
        if stored[key]:
            stored[key] -= 1
        else:
            todo.append(sample)
    samples = todo
    batches = length_batches([len(s.ids) for s in samples], batch_tokens)
    total = store.num_tokens + sum(len(s.ids) for s in samples)
    progress = Progress(what, total, report, done=store.num_tokens)
    for batch in batches:
        ids = nn.utils.rnn.pad_sequence([torch.tensor(samples[i].ids) for i in batch], batch_first=True)
        features, final, argmax = target(ids)
        arrays = []
        for b, i in enumerate(batch):
            n = len(samples[i].ids)
            arrays.append(
                {
                    "ids": np.asarray(samples[i].ids),
                    "loss_mask": np.asarray(samples[i].loss_mask),
                    "argmax": argmax[b, :n].numpy(),
                    "features": _fp16(features[b, :n]).numpy(),
                    "final_hidden": _fp16(final[b, :n]).numpy(),
                }
            )
        store.append(arrays, target.dtype)
        progress.update(sum(len(samples[i].ids) for i in batch))
    if progress.done > progress.start_done:
        report(progress.line("done"))
        writers = Counter(store.dtypes)
        report(f"{what} by target dtype: " + ", ".join(f"{n} {d}" for d, n in sorted(writers.items())))
