"""Checks of the generation settings a caller passes, by type and range, before any work is done.

The Python API takes these as plain values, so a wrong type (max_new_tokens="8", seed=-1, a float depth)
must end in an `EaglexError` that names the setting, not in a TypeError deep inside numpy. Limits that
depend on the artifact (vocabulary, context, the drafter's top-k) are checked by `Engine.check`.
"""

from __future__ import annotations

import numbers
from typing import Any

from eaglex.errors import EaglexError
from eaglex.runtime.sampling import validate_sampling

INTEGERS = {"max_new_tokens": 1, "top_k": 1, "depth": 1, "total_tokens": 1}  # name -> least value
MAX_SEED = 2**64 - 1  # numpy's generators take seeds of up to 64 bits without folding them
RUNTIMES = ("auto", "python", "native")  # whose loop decodes: Engine(runtime=...), runtime/native.py


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value: Any, least: int, most: int | None = None) -> None:
    if not is_integer(value):
        raise EaglexError(f"{flag(name)} must be an integer, got {value!r} ({type(value).__name__})")
    if value < least or (most is not None and value > most):
        bounds = f"between {least} and {most}" if most is not None else f"at least {least}"
        raise EaglexError(f"{flag(name)} must be {bounds}, got {value}")


def check_number(name: str, value: Any) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise EaglexError(f"{flag(name)} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_generation_settings(
    max_new_tokens: Any,
    temperature: Any,
    top_p: Any,
    seed: Any,
    top_k: Any,
    depth: Any,
    total_tokens: Any,
    speculative: Any,
    ngram: Any = 0,
    sample_top_k: Any = 0,
    adaptive_tree: Any = False,
    min_path_probability: Any = 0.0,
    min_grow_probability: Any = 0.0,
) -> None:
    """Types and ranges of GenerationConfig's fields (its __post_init__ calls this)."""
    values = {"max_new_tokens": max_new_tokens, "top_k": top_k, "depth": depth, "total_tokens": total_tokens}
    for name, value in values.items():
        check_integer(name, value, INTEGERS[name])
    check_integer("ngram", ngram, 0)
    check_integer(
        "sample_top_k", sample_top_k, 0
    )  # 0: off  # its upper bound depends on the artifact's tree (Engine.check)
    validate_sampling(check_number("temperature", temperature), check_number("top_p", top_p))
    for name, value in (
        ("min_path_probability", min_path_probability),
        ("min_grow_probability", min_grow_probability),
    ):
        if not 0 <= check_number(name, value) <= 1:
            raise EaglexError(f"{flag(name)} must be between 0 and 1 (0 = off), got {value}")
    if seed is not None:
        check_integer("seed", seed, 0)
        if seed > MAX_SEED:
            raise EaglexError(f"--seed must fit in 64 bits (at most 2**64 - 1), got {seed}")
    for name, value in (("speculative", speculative), ("adaptive_tree", adaptive_tree)):
        if not isinstance(value, bool):
            raise EaglexError(f"{name} must be True or False, got {value!r}")
