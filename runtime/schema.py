"""JSON <-> frozen dataclasses, checked: the machinery behind runtime/manifest.py's schema.

A field's type hint says what JSON it takes, its `metadata` the allowed range (`ranged`) or values
(`choice`), and whether the file may leave it out at its default (`OMIT_DEFAULT`); `build` reads a JSON
object into a dataclass and `ManifestError` names the first field that breaks the contract.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Union, get_args, get_origin, get_type_hints

from eaglex.errors import EaglexError

FORMAT = "eaglex-artifact"
VERSION = 1

# An optional field that the file leaves out while it has its default value (older files lack it).
OMIT_DEFAULT = {"omit_default": True}


class ManifestError(EaglexError):
    """A manifest that breaks the contract: `where` is the field's path (target.num_layers)."""

    def __init__(self, where: str, problem: str):
        # Keys may hold newlines or lone surrogates: escape them, so the message stays one printable line.
        where = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in where)
        super().__init__(f"field {where} {problem}")
        self.where, self.problem = where, problem


def ranged(ge: int | None = None, le: int | None = None, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"ge": ge, "le": le})


def choice(*choices: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"choices": choices})


def invariant(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ManifestError(where, problem)


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("in_file", True)
            and not (f.metadata.get("omit_default") and getattr(value, f.name) == f.default)
        }
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    return value


def kind(value: Any) -> str:
    text = json.dumps(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def parse(hint: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    """One JSON value as the type `hint` says, checked against the field's range or choices."""
    if get_origin(hint) in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise ManifestError(where, f"must be a list, got {kind(value)}")
        return tuple(parse(get_args(hint)[0], v, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if get_origin(hint) is Mapping:
        if not isinstance(value, dict):
            raise ManifestError(where, f"must be an object, got {kind(value)}")
        return {k: parse(get_args(hint)[1], v, f"{where}.{k}", meta) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # JSON writes 1.0 as 1 as readily
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ManifestError(
            where, f"must be {'an integer' if hint is int else hint.__name__}, got {kind(value)}"
        )
    if hint is float and not math.isfinite(value):
        raise ManifestError(where, f"must be a finite number, got {kind(value)}")
    low, high, choices = meta.get("ge"), meta.get("le"), meta.get("choices")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ManifestError(where, f"must be {bounds}, got {value}")
    if choices and value not in choices:
        raise ManifestError(where, f"must be one of {', '.join(choices)}, got {kind(value)}")
    return value


def build(cls: type, data: Any, where: str, **extra: Any) -> Any:
    """A dataclass from a JSON object: every required key present, no unknown key, every value valid."""
    if not isinstance(data, dict):
        raise ManifestError(where or "(top level)", f"must be an object, got {kind(data)}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("in_file", True)}
    prefix = f"{where}." if where else ""
    if unknown := sorted(set(data) - set(known)):
        raise ManifestError(f"{prefix}{unknown[0]}", f"is not part of format version {VERSION}")
    values = dict(extra)
    for name, f in known.items():
        if name in data:
            values[name] = parse(hints[name], data[name], prefix + name, f.metadata)
        elif f.default is dataclasses.MISSING:
            raise ManifestError(prefix + name, "is missing")
    return cls(**values)
