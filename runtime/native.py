"""The draft-verify loop of libeaglex (include/eaglex.h), driven from Python through its C ABI.

Why: the loop in runtime/generate.py spends ~0.3 ms of host work per round without a drafter and ~0.9 ms
with one; libeaglex's C++ loop spends 21-98 µs (docs/EMBEDDING.md). On a 4-13 ms round that is a few
percent of decoding speed, which `eaglex run --runtime native` and `eaglex bench --runtime native` recover.
The graphs, the onnxruntime and the algorithm are the same; tests/test_native_python.py pins the tokens
to the Python loop's.

libeaglex runs onnxruntime-flavoured float32 artifacts on the CPU (`unsupported` says why not otherwise),
prompt lookup (`--ngram`) included. A generation runs in a worker thread (the C call releases the GIL)
and hands each pass's tokens to the caller's iterator through a queue, so streaming works as in Python.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from eaglex.errors import EaglexError
from eaglex.runtime.generate import GenerationConfig, GenerationStats
from eaglex.runtime.manifest import Manifest
from eaglex.runtime.native_build import LIBRARY, build, built_library

ABI_VERSION = 4  # include/eaglex.h EAGLEX_ABI_VERSION
OK, CANCELLED = 0, 6
VERIFY_SIZES = 1  # the Python loader has already checked the files as asked (checksums or sizes)


class Config(ctypes.Structure):
    _fields_ = [
        ("max_new_tokens", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("top_p", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("tree_top_k", ctypes.c_int32),
        ("tree_depth", ctypes.c_int32),
        ("tree_total_tokens", ctypes.c_int32),
        ("speculative", ctypes.c_int32),
        ("stop_at_eos", ctypes.c_int32),
        ("ngram", ctypes.c_int32),  # ABI 2
        ("tree_min_path_probability", ctypes.c_double),  # ABI 3
        ("tree_min_grow_probability", ctypes.c_double),
    ]


class Stats(ctypes.Structure):
    _fields_ = [
        ("prompt_tokens", ctypes.c_int32),
        ("new_tokens", ctypes.c_int32),
        ("target_passes", ctypes.c_int32),
        ("drafter_calls", ctypes.c_int32),
        ("prefill_seconds", ctypes.c_double),
        ("decode_seconds", ctypes.c_double),
        ("graph_seconds", ctypes.c_double),
        ("draft_seconds", ctypes.c_double),  # ABI 4
        ("verify_seconds", ctypes.c_double),
    ]


class OpenOptions(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int32), ("verify", ctypes.c_int32)]


ON_TOKENS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t, ctypes.c_void_p)


def unsupported(manifest: Manifest, backend: str, device: str) -> str | None:
    """Why libeaglex cannot run this artifact as asked, or None when it can."""
    if backend != "onnxruntime" or manifest.backend != "onnxruntime":
        return "it runs onnxruntime-flavoured artifacts only (not TensorRT)"
    if device == "cuda":
        return "it runs on the CPU only"
    if manifest.target.dtype != "float32":
        return f"it runs float32 graphs only; this artifact's are {manifest.target.dtype}"
    return None


def choose(runtime: str, manifest: Manifest, backend: str, device: str, threads: int) -> NativeLoop | None:
    """The libeaglex loop for Engine(runtime=...): "native" builds the library if needed and refuses what
    it cannot run; "auto" takes it only where it is already built and can run the artifact."""
    reason = unsupported(manifest, backend, device)
    library = built_library()
    if runtime == "auto":
        return NativeLoop(manifest, threads, library) if library is not None and reason is None else None
    if reason is not None:
        raise EaglexError(f"libeaglex cannot run {manifest.root}: {reason}; use --runtime python")
    return NativeLoop(manifest, threads, library or build() / LIBRARY)


def load_library(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise EaglexError(
            f"cannot load libeaglex from {path} ({e}): rebuild it or unset EAGLEX_LIBRARY"
        ) from None
    # Declared, so that ctypes passes size_t and pointers at their full width.
    handle, pointer = ctypes.c_void_p, ctypes.c_void_p
    lib.eaglex_last_error.restype = ctypes.c_char_p
    lib.eaglex_abi_version.restype = ctypes.c_int
    lib.eaglex_open_ex.argtypes = [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(handle)]
    lib.eaglex_generate.argtypes = [
        handle, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t, ctypes.POINTER(Config), ON_TOKENS, pointer,
        ctypes.POINTER(Stats),
    ]  # fmt: skip
    lib.eaglex_close.argtypes = [handle]
    if lib.eaglex_abi_version() != ABI_VERSION:
        raise EaglexError(
            f"{path} speaks C ABI version {lib.eaglex_abi_version()}, this eaglex version {ABI_VERSION}: "
            "rebuild libeaglex from this checkout"
        )
    return lib


class NativeLoop:
    """One libeaglex engine: the artifact's graphs and caches in C++, one generation at a time."""

    def __init__(self, manifest: Manifest, threads: int, library: Path):
        self.lib = load_library(library)
        self.has_drafter = manifest.drafter is not None
        self.eos = set(manifest.tokens.eos_token_ids)
        self.handle = ctypes.c_void_p()
        options = OpenOptions(threads, VERIFY_SIZES)
        root = str(manifest.root).encode()
        if self.lib.eaglex_open_ex(root, ctypes.byref(options), ctypes.byref(self.handle)) != OK:
            raise EaglexError(f"libeaglex: {self.lib.eaglex_last_error().decode()}")

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.eaglex_close(self.handle)

    def generate(
        self, prompt: list[int], config: GenerationConfig, stop_tokens: set[int], stats: GenerationStats
    ) -> Iterator[list[int]]:
        """Yields each pass's tokens, as runtime.generate.generate does; fills `stats` at the end. Closing
        the iterator early cancels the C loop at its next pass."""
        chunks: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        cancel = threading.Event()
        result: dict[str, object] = {}

        @ON_TOKENS
        def on_tokens(tokens, n, _user) -> int:  # type: ignore[no-untyped-def]
            chunks.put(tokens[:n])
            return 1 if cancel.is_set() else 0

        if stop_tokens and stop_tokens != self.eos:
            raise EaglexError("libeaglex stops at the artifact's eos ids or nowhere: use --runtime python")
        ids = (ctypes.c_int32 * len(prompt))(*prompt)
        settings = self._config(config, stop_at_eos=bool(stop_tokens))
        counters = Stats()

        def work() -> None:
            args = (self.handle, ids, len(prompt), ctypes.byref(settings), on_tokens, None)
            status = self.lib.eaglex_generate(*args, ctypes.byref(counters))
            result["status"] = status
            result["error"] = self.lib.eaglex_last_error().decode()  # per thread: read it here
            chunks.put(None)

        worker = threading.Thread(target=work, name="eaglex-native", daemon=True)
        worker.start()
        passes: list[int] = []  # tokens of each pass, the prefill's first
        last = -1
        try:
            while (chunk := chunks.get()) is not None:
                passes.append(len(chunk))
                last = chunk[-1]
                yield chunk
        finally:
            cancel.set()
            worker.join()
        if result["status"] not in (OK, CANCELLED):
            raise EaglexError(f"libeaglex: {result['error']}")
        stats.prompt_tokens, stats.new_tokens = counters.prompt_tokens, counters.new_tokens
        stats.target_passes, stats.drafter_calls = counters.target_passes, counters.drafter_calls
        stats.prefill_seconds, stats.decode_seconds = counters.prefill_seconds, counters.decode_seconds
        stats.accepted_lengths = passes[1:]
        stats.verified_tokens = sum(passes[1:])
        stats.draft_seconds, stats.verify_seconds = counters.draft_seconds, counters.verify_seconds
        if last in stop_tokens:
            stats.stop_reason = "stop token"
        elif stats.new_tokens >= config.max_new_tokens:
            stats.stop_reason = "length"
        else:
            stats.stop_reason = "context limit"

    def _config(self, config: GenerationConfig, stop_at_eos: bool) -> Config:
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "little")
        return Config(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.sample_top_k,
            seed=seed,
            tree_top_k=config.top_k,
            tree_depth=config.depth,
            tree_total_tokens=config.total_tokens,
            speculative=int(config.speculative and self.has_drafter),
            stop_at_eos=int(stop_at_eos),
            ngram=config.ngram,
            tree_min_path_probability=config.min_path_probability,
            tree_min_grow_probability=config.min_grow_probability,
        )
