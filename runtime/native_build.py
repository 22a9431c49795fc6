"""Where libeaglex (native/, docs/EMBEDDING.md) comes from for the Python process: $EAGLEX_LIBRARY, or the
CMake build of this checkout's native/ sources, cached under ~/.cache/eaglex/native-build keyed by a hash
of those sources and of this Python (whose onnxruntime wheel the library loads). The tests build into the
same folder, so a checkout that ran them has the library already.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from eaglex.errors import EaglexError

CHECKOUT = Path(__file__).resolve().parents[1]  # runtime/ sits at the top of the checkout
SOURCES = [CHECKOUT / "native", CHECKOUT / "include", CHECKOUT / "examples"]
LIBRARY = "libeaglex.so"
NO_HEADERS = "could not fetch onnxruntime headers"


def sources_present() -> bool:
    """Installed from a wheel there is no native/ folder: libeaglex is then built from a checkout."""
    return all(folder.is_dir() for folder in SOURCES)


def build_dir() -> Path:
    digest = hashlib.sha256(sys.prefix.encode())  # the environment whose onnxruntime wheel it loads
    for folder in SOURCES:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(CHECKOUT)).encode() + path.read_bytes())
    root = Path(os.environ.get("EAGLEX_CACHE", Path.home() / ".cache" / "eaglex"))
    return root / "native-build" / digest.hexdigest()[:16]


def built_library() -> Path | None:
    """$EAGLEX_LIBRARY when set, else this checkout's cached build if it exists; never builds."""
    if given := os.environ.get("EAGLEX_LIBRARY"):
        return Path(given)
    if not sources_present():
        return None
    library = build_dir() / LIBRARY
    return library if library.is_file() else None


def build(progress: Callable[[str], object] = print) -> Path:
    """Builds libeaglex (with its C tests and example) unless the cached build is current; returns the build
    folder. A minute or two the first time: CMake, a C++17 compiler and trixie's onnxruntime headers."""
    if not sources_present():
        raise EaglexError(
            "libeaglex is built from an eaglex checkout (native/ and include/), which this installation "
            "lacks: clone the repository and pip install -e . there, or set EAGLEX_LIBRARY to a built .so"
        )
    folder = build_dir()
    if (folder / "eaglex_c_test").is_file() and (folder / LIBRARY).is_file():
        return folder
    if missing := [tool for tool in ("cmake", "c++", "cc") if shutil.which(tool) is None]:
        raise EaglexError(f"building libeaglex needs {', '.join(missing)}: apt-get install cmake g++")
    progress(f"building libeaglex into {folder} (once, a minute or two)")
    configure = [
        "cmake",
        "-S",
        str(CHECKOUT / "native"),
        "-B",
        str(folder),
        f"-DEAGLEX_PYTHON={sys.executable}",
    ]
    for command in (configure, ["cmake", "--build", str(folder), "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        log = result.stdout + result.stderr
        if NO_HEADERS in log:
            raise EaglexError(
                f"libeaglex: {NO_HEADERS} (apt-get download of Debian trixie's libonnxruntime-dev failed); "
                "pass the headers with cmake -DEAGLEX_ORT_INCLUDE_DIR=... (docs/EMBEDDING.md)"
            )
        if result.returncode != 0:
            errors = [line for line in log.splitlines() if "error" in line.lower()] or log.splitlines()[-1:]
            first = errors[0].strip() if errors else "no output"
            raise EaglexError(f"building libeaglex failed: {first} (rerun: {' '.join(command)})")
    return folder
