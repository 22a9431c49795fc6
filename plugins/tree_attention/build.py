"""Builds the op's native libraries with CMake (CMakeLists.txt beside this file) into a cache folder.

The folder is keyed by a hash of the sources and the CMake options, so an edited kernel is rebuilt and
an unchanged one is built once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from eaglex.errors import EaglexError

SOURCES = Path(__file__).parent
SOURCE_FILES = ("CMakeLists.txt", "kernel.h", "kernel.cuh", "kernel.cu", "kernel_cpu.cc", "plugin.cpp")


def cache_root() -> Path:
    return Path(os.environ.get("EAGLEX_CACHE", Path.home() / ".cache" / "eaglex")) / "plugins"


def build_library(target: str, options: Sequence[str] = ()) -> Path:
    """Configures and builds CMake `target` (e.g. eaglex_tree_attention_cpu); returns the .so path."""
    if shutil.which("cmake") is None:
        raise EaglexError(
            "building the tree-attention library needs cmake and a C++17 compiler: "
            "apt-get install cmake g++ (or pip install cmake)"
        )
    digest = hashlib.sha256(" ".join(options).encode())
    for name in SOURCE_FILES:
        digest.update((SOURCES / name).read_bytes())
    build = cache_root() / f"{target}-{digest.hexdigest()[:16]}"
    library = build / f"lib{target}.so"
    if library.is_file():
        return library
    for command in (
        ["cmake", "-S", str(SOURCES), "-B", str(build), *options],
        ["cmake", "--build", str(build), "--target", target, "--parallel", "2"],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            log = (result.stdout + result.stderr).strip().splitlines()
            errors = [line for line in log if "error" in line.lower()] or log[-1:]
            raise EaglexError(
                f"building {target} failed: {errors[0].strip() if errors else 'no output'} "
                f"(full log: {' '.join(command)})"
            )
    return library
