"""Optional dependencies, checked before a command starts its work rather than discovered at its end.

Each extra of pyproject.toml that a command may need is listed with the modules it provides; `require`
turns the missing ones into one EaglexError that names the extra to install.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("matplotlib",),
    "export": ("torch", "transformers"),
    "llama.cpp": ("llama_cpp",),  # extra `peers`
    "onnxruntime-genai": ("onnxruntime_genai", "onnx_ir"),  # extra `peers`; onnx_ir comes with `export`
}
PACKAGE_EXTRA = {"bench": "bench", "export": "export", "llama.cpp": "peers", "onnxruntime-genai": "peers"}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a None in sys.modules blocks an import)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(needs: Iterable[str]) -> dict[str, list[str]]:
    """{need: its missing modules} for the needs (keys of EXTRAS) that are not fully installed."""
    gaps = {need: [m for m in EXTRAS[need] if not installed(m)] for need in needs}
    return {need: modules for need, modules in gaps.items() if modules}


def require(needs: Iterable[str], purpose: str, alternative: str = "") -> None:
    """Raises one EaglexError naming every extra to install for `purpose`, e.g. "--compare" (or, when
    given, the `alternative` way around it)."""
    from eaglex.errors import EaglexError

    gaps = missing(needs)
    if gaps:
        modules = ", ".join(m for ms in gaps.values() for m in ms)
        extras = ",".join(dict.fromkeys(PACKAGE_EXTRA[need] for need in gaps))
        raise EaglexError(
            f"{purpose} needs {modules} (not installed): pip install 'eaglex[{extras}]'{alternative}"
        )
