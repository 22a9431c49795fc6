"""`manifest.json`, the contract of exporter and runtime (docs/ARTIFACT.md), as typed frozen objects.

This module is its one owner: `load` checks a manifest once, as a whole, against the schema below (types,
ranges, required keys, allowed values, and the invariants between sections), and `save` is the only writer
(atomic, through a validated round trip). Export, quantize, build and tune construct or update a
`Manifest`; everything else reads its typed fields. The schema is the dataclasses themselves: a field's
type hint says what JSON it takes, its `metadata` the allowed range, `__post_init__` the invariants.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError
from eaglex.runtime.schema import (
    FORMAT,
    OMIT_DEFAULT,
    VERSION,
    ManifestError,
    build,
    choice,
    invariant,
    kind,
    ranged,
    to_json,
)

NAME = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt")
DTYPES = ("float32", "float16")
REEXPORT = "re-export the artifact with eaglex export"
# Generous bounds that no real model reaches; beyond them a value is damage, not a model.
MAX_DIM = 1 << 20
MAX_CONTEXT = 1 << 22
MAX_TREE = 4096


@dataclass(frozen=True, kw_only=True)
class Quantization:
    weights: str = choice("int8", "int4")
    method: str = choice("MatMulNBits")
    block_size: int = ranged(16, 4096)
    symmetric: bool
    activations: str = choice("fp32", "int8")
    accuracy_level: int = ranged(0, 4)
    quantized_linear_layers: int = ranged(1)
    embeddings: bool
    lm_head: bool

    @property
    def lossless_speculation(self) -> bool:
        """Whether speculative output equals plain decoding's with these weights: not with int8 activations,
        whose rounding amplifies the last-bit differences between verifying a tree and decoding one token
        (measured: 2 of 10 MT-bench outputs identical at int4 with int8 activations)."""
        return self.activations != "int8"


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    file: str
    source: str
    architecture: str = choice("llama", "mistral", "qwen2", "qwen3")
    dtype: str = choice(*DTYPES, default="float32")
    hidden_size: int = ranged(1, MAX_DIM)
    num_layers: int = ranged(1, 4096)
    num_heads: int = ranged(1, 4096)
    num_kv_heads: int = ranged(1, 4096)
    head_dim: int = ranged(1, 4096)
    vocab_size: int = ranged(1, MAX_DIM * 16)
    max_context: int = ranged(2, MAX_CONTEXT)
    feature_layers: tuple[int, ...] = ranged(0, 4096)
    quantization: Quantization | None = None
    # Weight bytes one pass reads (gathered tables count a row, not whole); 0: unknown, use file sizes.
    bytes_per_pass: int = field(default=0, metadata={**OMIT_DEFAULT, "ge": 0})

    def __post_init__(self) -> None:
        invariant(
            self.num_heads % self.num_kv_heads == 0, "target.num_heads", "must be a multiple of num_kv_heads"
        )
        invariant(len(self.feature_layers) == 3, "target.feature_layers", "must list three layers (EAGLE-3)")
        invariant(
            max(self.feature_layers) <= self.num_layers, "target.feature_layers", "must be at most num_layers"
        )


@dataclass(frozen=True, kw_only=True)
class DrafterSpec:
    file: str
    source: str
    hidden_size: int = ranged(1, MAX_DIM)
    num_heads: int = ranged(1, 4096)
    num_kv_heads: int = ranged(1, 4096)
    head_dim: int = ranged(1, 4096)
    draft_vocab_size: int = ranged(1, MAX_DIM * 16)
    max_top_k: int = ranged(1, 1024)
    dtype: str = choice(*DTYPES, default="float32")
    quantization: Quantization | None = None
    bytes_per_pass: int = field(default=0, metadata={**OMIT_DEFAULT, "ge": 0})  # as TargetSpec's

    def __post_init__(self) -> None:
        invariant(self.max_top_k <= self.draft_vocab_size, "drafter.max_top_k", "exceeds draft_vocab_size")


@dataclass(frozen=True, kw_only=True)
class TokenSpec:
    bos_token_id: int | None = ranged(0, default=None)
    eos_token_ids: tuple[int, ...] = ranged(0)
    pad_token_id: int | None = ranged(0, default=None)
    has_chat_template: bool = False


@dataclass(frozen=True, kw_only=True)
class BatchTree:
    """The tree `eaglex tune` picked for `batch` sequences sharing each packed pass of the serving scheduler
    (speculative: False where plain decoding was faster at that batch size)."""

    batch: int = ranged(1, MAX_TREE)
    speculative: bool
    top_k: int = ranged(1, 1024)
    depth: int = ranged(1, MAX_TREE)
    total_tokens: int = ranged(1, MAX_TREE)

    def __post_init__(self) -> None:
        where = f"tree.by_batch[batch {self.batch}]"
        invariant(self.depth <= max(1, self.total_tokens - 1), f"{where}.depth", "exceeds total_tokens - 1")


@dataclass(frozen=True, kw_only=True)
class TreeSpec:
    """The default draft tree. speculative: False where tuning found plain decoding faster on the machine.
    ngram: prompt lookup's tokens per tree by default (runtime/ngram.py; 0: off), where tuning found it
    faster. min_path_probability, min_grow_probability: the tree shrinks where the drafter is unsure
    (GenerationConfig; 0: off), top_k, depth and total_tokens being its caps. by_batch: the serving
    scheduler's trees per batch size, increasing batch sizes (empty: not tuned)."""

    top_k: int = ranged(1, 1024)
    depth: int = ranged(1, MAX_TREE)
    total_tokens: int = ranged(1, MAX_TREE)
    max_total_tokens: int = ranged(1, MAX_TREE)
    speculative: bool = field(default=True, metadata=OMIT_DEFAULT)
    ngram: int = field(default=0, metadata=OMIT_DEFAULT)
    min_path_probability: float = field(default=0.0, metadata={**OMIT_DEFAULT, "ge": 0, "le": 1})
    min_grow_probability: float = field(default=0.0, metadata={**OMIT_DEFAULT, "ge": 0, "le": 1})
    by_batch: tuple[BatchTree, ...] = field(default=(), metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        invariant(self.total_tokens <= self.max_total_tokens, "tree.total_tokens", "exceeds max_total_tokens")
        invariant(
            0 <= self.ngram <= self.max_total_tokens - self.total_tokens,
            "tree.ngram",
            "must be between 0 and max_total_tokens - total_tokens",
        )
        invariant(self.depth <= max(1, self.total_tokens - 1), "tree.depth", "exceeds total_tokens - 1")
        batches = [entry.batch for entry in self.by_batch]
        invariant(batches == sorted(set(batches)), "tree.by_batch", "must list increasing batch sizes")
        for entry in self.by_batch:
            invariant(
                entry.total_tokens <= self.max_total_tokens,
                f"tree.by_batch[batch {entry.batch}].total_tokens",
                "exceeds max_total_tokens",
            )


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    bytes: int = ranged(0)
    sha256: str


@dataclass(frozen=True, kw_only=True)
class EngineFile:
    """One graph's engines: `file` for datacenter TensorRT (built on the GPU that runs it), or `files` and
    the builder's `layers` lists per compute capability for TensorRT for RTX (built ahead of time)."""

    profiles: tuple[str, ...]
    file: str | None = field(default=None, metadata=OMIT_DEFAULT)
    files: Mapping[str, str] | None = field(default=None, metadata=OMIT_DEFAULT)
    layers: Mapping[str, str] | None = field(default=None, metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        invariant(
            (self.file is None) != (self.files is None),
            "engines",
            "needs one engine file (tensorrt) or files per compute capability (tensorrt-rtx)",
        )

    def names(self) -> list[str]:
        """Every file this record names (the file table must list them)."""
        return [self.file] if self.file else [*(self.files or {}).values(), *(self.layers or {}).values()]


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """TensorRT engines of `eaglex build`: which TensorRT built them (flavour, tensorrt_version) and for
    which GPUs (compute_capabilities); the plugin library serves datacenter TensorRT only."""

    tensorrt_version: str
    precision: str = choice("fp32", "fp16", "bf16")
    max_prompt: int = ranged(1, MAX_CONTEXT)
    plugin_library: str | None = field(default=None, metadata=OMIT_DEFAULT)
    target: EngineFile
    drafter: EngineFile | None = None
    flavour: str = field(
        default="tensorrt", metadata={"choices": ("tensorrt", "tensorrt-rtx"), "omit_default": True}
    )
    compute_capabilities: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    root: Path = field(metadata={"in_file": False})  # the artifact folder
    backend: str = choice(*BACKENDS, default="onnxruntime")
    target: TargetSpec
    drafter: DrafterSpec | None = None
    tokens: TokenSpec
    tree: TreeSpec
    kv_compact: str | None = field(default=None, metadata=OMIT_DEFAULT)
    engines: EngineSpec | None = field(default=None, metadata=OMIT_DEFAULT)
    files: Mapping[str, FileEntry]

    def __post_init__(self) -> None:
        for name, entry in self.files.items():
            invariant(_safe_name(name), f"files.{name}", "is not a relative path inside the artifact")
            invariant(
                bool(re.fullmatch("[0-9a-f]{64}", entry.sha256)), f"files.{name}.sha256", "is not a sha256"
            )
        listed = [("target.file", self.target.file), ("kv_compact", self.kv_compact)]
        if self.drafter is not None:
            listed += [("drafter.file", self.drafter.file), ("drafter", "embed_tokens.npy")]
            invariant(
                self.drafter.hidden_size == self.target.hidden_size,
                "drafter.hidden_size",
                "differs from target's",
            )
            invariant(self.tree.top_k <= self.drafter.max_top_k, "tree.top_k", "exceeds drafter.max_top_k")
            for entry in self.tree.by_batch:
                where = f"tree.by_batch[batch {entry.batch}].top_k"
                invariant(entry.top_k <= self.drafter.max_top_k, where, "exceeds drafter.max_top_k")
        if self.engines is not None:
            listed += [("engines.target", name) for name in self.engines.target.names()]
            listed += [("engines.plugin_library", self.engines.plugin_library)]
            if self.engines.drafter is not None:
                listed += [("engines.drafter", name) for name in self.engines.drafter.names()]
        for where, name in listed:
            invariant(name is None or name in self.files, where, f"names {name}, which files does not list")
        invariant(
            self.tree.max_total_tokens <= self.target.max_context,
            "tree.max_total_tokens",
            "exceeds max_context",
        )

    def path(self, name: str) -> Path:
        return self.root / name

    def graph_bytes(self, file: str) -> int:
        """Bytes of a graph and its external weights, as the file table lists them."""
        return sum(entry.bytes for name, entry in self.files.items() if name.startswith(file))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **to_json(self)}


def _safe_name(name: str) -> bool:
    """A file name the runtime may open: relative, inside the artifact, and one the OS can spell."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    parts = name.split("/")
    return not ({"", ".", ".."} & set(parts)) and not any(c in name for c in "\\\0")


def from_json(data: Any, root: Path) -> Manifest:
    """The manifest in `data` (parsed JSON); ManifestError names the first field that breaks the contract."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError("format", f"must be {FORMAT!r}: this is not an eaglex manifest")
    if type(data.get("version")) is not int or data["version"] != VERSION:  # true == 1 in Python
        raise ManifestError("version", f"is {kind(data.get('version'))}, this eaglex reads version {VERSION}")
    rest = {k: v for k, v in data.items() if k not in ("format", "version")}
    return build(Manifest, rest, "", root=root)


def read_text(path: Path, what: str = "the artifact") -> str:
    """A text file of the artifact, or one line naming it: missing, unreadable or not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EaglexError(f"{path} is missing; {REEXPORT}") from None
    except OSError as e:
        raise EaglexError(f"{path} cannot be read ({e.strerror}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise EaglexError(
            f"{path} is not UTF-8 text (byte {e.start}); {what} is damaged: {REEXPORT}"
        ) from None


def read_json(path: Path, what: str = "the artifact") -> Any:
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise EaglexError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {REEXPORT}") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise EaglexError(f"{path} is not valid JSON ({e}); {REEXPORT}") from None
    except RecursionError:
        raise EaglexError(f"{path} is nested too deeply to be a manifest; {REEXPORT}") from None


def load(artifact_dir: str | Path, checksums: bool = True) -> Manifest:
    """The artifact's manifest, validated as a whole, with its files checked against the file table."""
    root = Path(artifact_dir)
    path = root / NAME
    if not root.is_dir():
        raise EaglexError(f"artifact folder {root} does not exist; create it with eaglex export")
    if not path.is_file():
        raise EaglexError(
            f"{root} has no {NAME}: it is not an eaglex artifact; create one with eaglex export"
        )
    try:
        manifest = from_json(read_json(path), root)
    except ManifestError as e:
        raise EaglexError(
            f"{path}: {e}; the artifact is damaged or from another eaglex: {REEXPORT}"
        ) from None
    verify_files(manifest, checksums)
    return manifest


def save(manifest: Manifest, folder: Path | None = None) -> Path:
    """Writes manifest.json into `folder` (default: manifest.root) atomically: readers see the old file or
    the new one, never half of one. The object goes through `from_json` first, so nothing writes a manifest
    that `load` would refuse."""
    data = manifest.to_json()
    from_json(json.loads(json.dumps(data)), manifest.root)
    path = Path(folder or manifest.root) / NAME
    partial = path.with_name(f".{NAME}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path, names: Iterable[str]) -> dict[str, FileEntry]:
    """The `files` entries (size, sha256) of these files under root, sorted by name."""
    return {n: FileEntry(bytes=(root / n).stat().st_size, sha256=sha256(root / n)) for n in sorted(names)}


def verify_files(manifest: Manifest, checksums: bool = True) -> None:
    """Refuses an artifact with a missing, truncated or altered file: it would fail obscurely later."""
    for name, info in manifest.files.items():
        path = manifest.root / name
        if not path.is_file():
            raise EaglexError(f"artifact file {path} is missing; {REEXPORT}")
        if path.stat().st_size != info.bytes:
            raise EaglexError(
                f"artifact file {path} has {path.stat().st_size} bytes, manifest says {info.bytes}: "
                f"the file is damaged; {REEXPORT}"
            )
        if checksums and sha256(path) != info.sha256:
            raise EaglexError(f"artifact file {path} fails its sha256 checksum: it is damaged; {REEXPORT}")
