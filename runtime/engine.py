"""Load an artifact once, generate many times: the Python API that the CLI (and later a server) uses."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from eaglex.errors import EaglexError
from eaglex.runtime.backends.base import GraphSession
from eaglex.runtime.draft import EagleDrafter
from eaglex.runtime.generate import GenerationConfig, GenerationStats, generate
from eaglex.runtime.manifest import REEXPORT, Manifest, load
from eaglex.runtime.settings import RUNTIMES, check_integer, is_integer
from eaglex.runtime.tokenizer import StreamDecoder, Tokenizer

BACKENDS = ("onnxruntime", "tensorrt")


def open_session(
    manifest: Manifest,
    backend: str,
    file: str,
    layers: int,
    kv_heads: int,
    head_dim: int,
    threads: int,
    device: str = "cpu",
    widths: dict[str, int] | None = None,
) -> GraphSession:
    """One graph of the artifact on `backend`; TensorRT runs the engine `eaglex build` made from it.

    device: onnxruntime's "cpu" or "cuda" (resolve_device). widths: the last
    dimension of inputs and outputs that the manifest promises (onnxruntime checks them at load)."""
    if backend == "tensorrt":
        from eaglex.runtime.backends.tensorrt import TrtGraphSession

        return TrtGraphSession.from_manifest(manifest, file, layers, kv_heads, head_dim)
    from eaglex.runtime.backends.onnxruntime import OrtGraphSession

    # A TensorRT-flavoured artifact also runs on onnxruntime, through the op's CPU reference.
    plugin_op = manifest.backend == "tensorrt"
    compact = manifest.kv_compact
    return OrtGraphSession(
        manifest.path(file),
        layers,
        kv_heads,
        head_dim,
        threads,
        plugin_op=plugin_op,
        device=device,
        compact_graph=manifest.path(compact) if compact else None,
        widths=widths,
    )


def load_embeddings(manifest: Manifest) -> np.ndarray:
    """embed_tokens.npy, memory-mapped, checked against the target's [vocab, hidden]."""
    path = manifest.path("embed_tokens.npy")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EaglexError(f"{path} cannot be read as a numpy array ({first}); {REEXPORT}") from None
    want = (manifest.target.vocab_size, manifest.target.hidden_size)
    if table.shape != want or table.dtype != np.float32:
        raise EaglexError(
            f"{path} holds {table.dtype} {list(table.shape)}, the manifest's target needs float32 "
            f"{list(want)} (vocab_size, hidden_size): the artifact is inconsistent; {REEXPORT}"
        )
    return table


class Engine:
    """An artifact's graphs, caches and tokenizer. Holds no global state: several engines can coexist.

    One engine runs one generation at a time (its KV caches are preallocated and reused): a second
    generation started while one is running (another thread, or an interleaved generator) raises
    EaglexError instead of corrupting both. Serve many requests at once with eaglex.runtime.batch.
    """

    BUSY = (
        "this Engine is already generating (another thread, or a generator not yet exhausted or closed): "
        "one Engine runs one generation at a time; finish or close() the first, load a second Engine, or "
        "serve concurrent requests through eaglex.runtime.batch.BatchEngine"
    )

    def __init__(
        self,
        manifest: Manifest,
        threads: int = 2,
        backend: str = "onnxruntime",
        device: str = "auto",
        runtime: str = "python",
    ):
        """device: where onnxruntime runs, "cpu", "cuda" or "auto" (the GPU when onnxruntime-gpu sees one
        and the artifact is float16); the TensorRT backend always runs on the GPU.
        runtime: whose loop decodes, "python" (runtime/generate.py), "native" (libeaglex, built on first
        use: runtime/native.py) or "auto" (native where it is built and can run the artifact). A native
        engine has no Python sessions (target and drafter are None) and cannot serve batches."""
        if backend not in BACKENDS:
            raise EaglexError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if runtime not in RUNTIMES:
            raise EaglexError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        check_integer("threads", threads, 1, 1024)
        self.manifest, self.threads = manifest, threads
        self.tokenizer = Tokenizer(manifest.root)
        self.stop_tokens = set(manifest.tokens.eos_token_ids)
        self._busy = threading.Lock()  # held while a generation runs: its caches are in use
        self.native = None
        if runtime != "python":
            from eaglex.runtime.native import choose

            self.native = choose(runtime, manifest, backend, device, threads)
        self.runtime = "native" if self.native is not None else "python"
        self.target: GraphSession | None = None
        self.drafter: EagleDrafter | None = None
        if self.native is not None:
            self.device = "cpu"
            return
        self.device = "cuda"
        if backend == "onnxruntime":
            from eaglex.runtime.backends.onnxruntime import resolve_device

            self.device = resolve_device(device, manifest.target.dtype, manifest.kv_compact is not None)
        target = manifest.target
        self.target = open_session(
            manifest,
            backend,
            target.file,
            target.num_layers,
            target.num_kv_heads,
            target.head_dim,
            threads,
            device=self.device,
            widths={"logits": target.vocab_size, "features": 3 * target.hidden_size},
        )
        if manifest.drafter is not None:
            spec = manifest.drafter
            session = open_session(
                manifest,
                backend,
                spec.file,
                1,
                spec.num_kv_heads,
                spec.head_dim,
                threads,
                device=self.device,
                widths={
                    "input_embeds": spec.hidden_size,
                    "hidden": spec.hidden_size,
                    "features": 3 * target.hidden_size,
                },
            )
            self.drafter = EagleDrafter(session, load_embeddings(manifest), 3 * target.hidden_size)
        if self.target.capacity != target.max_context:
            raise EaglexError(
                f"{manifest.path(target.file)} holds {self.target.capacity} cache rows but the manifest's "
                f"target.max_context is {target.max_context}: the artifact is inconsistent; {REEXPORT}"
            )

    @classmethod
    def load(
        cls,
        artifact_dir: str | Path,
        threads: int = 2,
        backend: str = "onnxruntime",
        checksums: bool = True,
        device: str = "auto",
        runtime: str = "python",
    ) -> Engine:
        if not isinstance(artifact_dir, str | Path):
            raise EaglexError(f"the artifact must be a folder path, got {type(artifact_dir).__name__}")
        return cls(load(artifact_dir, checksums), threads, backend, device, runtime)

    def default_config(self, **overrides: object) -> GenerationConfig:
        """The artifact's tree settings, with any field overridden (None means keep the default).
        Speculation is on unless the manifest says plain decoding is faster here (`eaglex tune`). Where no
        tree setting nor `speculative` is overridden, the tuned default holds whole: prompt lookup where
        the manifest says it is faster, and the batch scheduler may use the tree tuned for its batch size
        instead; a caller who picks a mode (plain, or a tree) gets it without lookup unless it asks. The
        tuned tree's probability cuts hold wherever its shape does: a caller who names a shape gets it
        without cuts unless it asks."""
        tree = self.manifest.tree
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        if unknown := sorted(set(overrides) - names):
            raise EaglexError(f"unknown generation setting {unknown[0]!r}: use {', '.join(sorted(names))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        tuned = not {"top_k", "depth", "total_tokens", "speculative"} & set(given)
        tuned_shape = not {"top_k", "depth", "total_tokens"} & set(given)  # its cuts come with it
        config = GenerationConfig(
            top_k=tree.top_k,
            depth=tree.depth,
            total_tokens=tree.total_tokens,
            speculative=tree.speculative,
            ngram=tree.ngram if tuned else 0,
            min_path_probability=tree.min_path_probability if tuned_shape else 0.0,
            min_grow_probability=tree.min_grow_probability if tuned_shape else 0.0,
            adaptive_tree=tuned,
        )
        return dataclasses.replace(config, **given)

    def weight_bytes_read(self, stats: GenerationStats) -> int:
        """Weight bytes streamed from memory during decoding: each target pass and drafter call reads its
        graph's weights once (the manifest's bytes_per_pass; the graph files' sizes in artifacts exported
        before it, which overstate where a pass only gathers rows of a table). On a CPU that is the cost
        that bounds decoding speed."""
        m = self.manifest
        total = stats.target_passes * (m.target.bytes_per_pass or m.graph_bytes(m.target.file))
        if m.drafter is not None:
            total += stats.drafter_calls * (m.drafter.bytes_per_pass or m.graph_bytes(m.drafter.file))
        return total

    def encode(self, text: str, chat: bool = False) -> list[int]:
        return self.tokenizer.prompt(text, chat)

    def check(self, prompt: list[int], config: GenerationConfig) -> None:
        """Rejects bad settings with one-line errors before any work is done."""
        limits = self.manifest
        max_top_k = limits.drafter.max_top_k if limits.drafter else 1
        if not isinstance(config, GenerationConfig):
            raise EaglexError(f"config must be a GenerationConfig, got {type(config).__name__}")
        if not isinstance(prompt, list | tuple | np.ndarray) or not all(is_integer(t) for t in prompt):
            raise EaglexError("the prompt must be a list of integer token ids (Engine.encode makes one)")
        if not len(prompt):
            raise EaglexError("the prompt is empty: give at least one token of text")
        if len(prompt) >= limits.target.max_context:
            raise EaglexError(
                f"the prompt has {len(prompt)} tokens but the artifact's context limit is "
                f"{limits.target.max_context} (prompt plus at least one new token): shorten the prompt or "
                "re-export with a larger --max-context"
            )
        if bad := [t for t in prompt if not 0 <= t < limits.target.vocab_size]:
            raise EaglexError(f"token id {bad[0]} is outside the vocabulary of {limits.target.vocab_size}")
        if config.speculative and limits.drafter is not None:
            if not 1 <= config.top_k <= max_top_k:
                raise EaglexError(
                    f"--top-k must be between 1 and {max_top_k} for this artifact, got {config.top_k}"
                )
            if not 1 <= config.total_tokens <= limits.tree.max_total_tokens:
                raise EaglexError(
                    f"--total-tokens must be between 1 and {limits.tree.max_total_tokens}, "
                    f"got {config.total_tokens}"
                )
            # A tree of T nodes is at most T - 1 levels deep: deeper drafting only costs drafter calls.
            most = max(1, config.total_tokens - 1)
            if not 1 <= config.depth <= most:
                raise EaglexError(
                    f"--depth must be between 1 and {most} (a tree of {config.total_tokens} nodes, "
                    f"--total-tokens, is no deeper), got {config.depth}"
                )
        drafted = config.total_tokens if config.speculative and limits.drafter is not None else 1
        if not 0 <= config.ngram <= limits.tree.max_total_tokens - drafted:
            raise EaglexError(
                f"--ngram must be between 0 and {limits.tree.max_total_tokens - drafted} (the artifact's "
                f"{limits.tree.max_total_tokens} tree tokens less the {drafted} drafted), got {config.ngram}"
            )

    def generate(
        self, prompt: list[int], config: GenerationConfig, stats: GenerationStats | None = None
    ) -> Iterator[list[int]]:
        """Yields lists of new token ids as they are accepted (one list per target pass)."""
        self.check(prompt, config)
        return self._exclusive(prompt, config, stats if stats is not None else GenerationStats())

    def _exclusive(
        self, prompt: list[int], config: GenerationConfig, stats: GenerationStats
    ) -> Iterator[list[int]]:
        """The generation holding the engine: the lock is taken at the first next() (a generator that is
        never started holds nothing) and released when the generator ends, is closed or is collected."""
        if not self._busy.acquire(blocking=False):
            raise EaglexError(self.BUSY)
        try:
            if self.native is not None:
                yield from self.native.generate(prompt, config, self.stop_tokens, stats)
                return
            assert self.target is not None
            drafter = self.drafter if config.speculative else None
            yield from generate(self.target, drafter, prompt, config, self.stop_tokens, stats)
        finally:
            self._busy.release()

    def stream_text(
        self, prompt: list[int], config: GenerationConfig, stats: GenerationStats | None = None
    ) -> Iterator[str]:
        """Yields decoded text pieces as tokens are accepted."""
        decoder = StreamDecoder(self.tokenizer)
        for tokens in self.generate(prompt, config, stats):
            if piece := decoder.push(tokens):
                yield piece
