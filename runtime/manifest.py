"""Reads and checks `manifest.json`, the versioned contract of exporter and runtime (docs/ARTIFACT.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError

FORMAT = "eaglex-artifact"
VERSION = 1


@dataclass(frozen=True)
class TargetSpec:
    file: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    feature_layers: tuple[int, ...]


@dataclass(frozen=True)
class DrafterSpec:
    file: str
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    draft_vocab_size: int
    max_top_k: int


@dataclass(frozen=True)
class TreeSpec:
    top_k: int
    depth: int
    total_tokens: int
    max_total_tokens: int
    # False where `eaglex tune` found plain decoding faster than every tree: run then decodes plain unless
    # asked to speculate. Manifests from before tune recorded it lack the field: speculation is the default.
    speculative: bool = True


@dataclass(frozen=True)
class Manifest:
    root: Path
    target: TargetSpec
    drafter: DrafterSpec | None
    tree: TreeSpec
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    raw: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.root / name


def _pick(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = cls.__dataclass_fields__
    missing = [n for n, f in fields.items() if n not in data and f.default is MISSING]
    if missing:
        raise EaglexError(f"manifest.json: {where} lacks {', '.join(missing)}; re-export the artifact")
    values = {n: tuple(data[n]) if isinstance(data[n], list) else data[n] for n in fields if n in data}
    return cls(**values)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(root: Path, files: dict[str, dict[str, Any]], checksums: bool = True) -> None:
    """Refuses an artifact with a missing, truncated or altered file: it would fail obscurely later."""
    for name, info in files.items():
        path = root / name
        if not path.is_file():
            raise EaglexError(f"artifact file {path} is missing; re-run eaglex export")
        if path.stat().st_size != info["bytes"]:
            raise EaglexError(
                f"artifact file {path} has {path.stat().st_size} bytes, manifest says {info['bytes']}: "
                "the file is damaged; re-run eaglex export"
            )
        if checksums and sha256(path) != info["sha256"]:
            raise EaglexError(
                f"artifact file {path} fails its sha256 checksum: it is damaged; re-run eaglex export"
            )


def load_manifest(artifact_dir: str | Path, checksums: bool = True) -> Manifest:
    root = Path(artifact_dir)
    path = root / "manifest.json"
    if not root.is_dir():
        raise EaglexError(f"artifact folder {root} does not exist; create it with eaglex export")
    if not path.is_file():
        raise EaglexError(
            f"{root} has no manifest.json: it is not an eaglex artifact; create one with eaglex export"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EaglexError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); re-run eaglex export"
        ) from None
    if raw.get("format") != FORMAT:
        raise EaglexError(f"{path} is not an eaglex artifact manifest (format {raw.get('format')!r})")
    if raw.get("version") != VERSION:
        raise EaglexError(
            f"{path} has format version {raw.get('version')}, this eaglex reads version {VERSION}: "
            "re-export the artifact with this eaglex"
        )
    verify_files(root, raw.get("files", {}), checksums)
    tokens = raw.get("tokens", {})
    eos = tokens.get("eos_token_ids", [])
    return Manifest(
        root=root,
        target=_pick(TargetSpec, raw.get("target", {}), "target"),
        drafter=_pick(DrafterSpec, raw["drafter"], "drafter") if raw.get("drafter") else None,
        tree=_pick(TreeSpec, raw.get("tree", {}), "tree"),
        bos_token_id=tokens.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
        raw=raw,
    )
