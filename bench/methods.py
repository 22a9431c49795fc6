"""Ways to decode a prompt, measured the same way: greedy, decode time from the first new token on.

Every method returns a `Decode`: the new tokens, the seconds spent producing all tokens after the first
(the first comes out of the prefill, whose cost depends on the prompt and not on the decoding method),
and how many target forward passes produced them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats


@dataclass
class Decode:
    tokens: list[int]
    decode_seconds: float
    passes: int  # target forward passes after the prefill
    weight_bytes: int  # weight bytes those passes (and drafter calls) streamed from memory
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0


class Method(Protocol):
    name: str
    setup: str  # how it is installed and configured, for the report

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode: ...


class EaglexMethod:
    """label: which artifact, when a run holds several (e.g. "int4"). reference: the method whose output
    this one must reproduce, when not the run's first (a quantized artifact's EAGLE-3 reproduces its own
    plain decoding, not the float32 one)."""

    def __init__(
        self,
        engine: Engine,
        speculative: bool,
        temperature: float = 0.0,
        label: str = "",
        reference: str | None = None,
        **tree: int,
    ):
        """tree: GenerationConfig's tree settings (top_k, depth, total_tokens) and ngram (prompt lookup; off
        unless given, whatever the manifest's default, so that "plain" and "EAGLE-3" stay what they say)."""
        tree = {"ngram": 0, **tree}
        self.engine, self.speculative, self.temperature, self.tree = engine, speculative, temperature, tree
        self.name = eaglex_method_name(speculative, label, tree["ngram"])
        self.reference = reference
        config = engine.default_config(speculative=speculative, **tree)
        shape = f"tree top_k {config.top_k} depth {config.depth} total_tokens {config.total_tokens}"
        if config.min_path_probability or config.min_grow_probability:
            shape += (
                f" (caps), cut below path probability {config.min_path_probability:g} and grow "
                f"probability {config.min_grow_probability:g}"
            )
        # Weight bytes per call as genai's and llama.cpp's are counted: every weight a one-token pass reads
        # (an embedding table it only gathers from is left out): the manifest's bytes_per_pass, counted
        # here from the graph for artifacts exported before it (their file sizes include the table).
        from eaglex.exporter.quantize import streamed_weight_bytes

        manifest = engine.manifest
        per_pass = lambda graph: graph.bytes_per_pass or streamed_weight_bytes(manifest.path(graph.file))  # noqa: E731
        self.target_bytes = per_pass(manifest.target)
        self.drafter_bytes = per_pass(manifest.drafter) if manifest.drafter else 0
        loop = "libeaglex loop" if engine.runtime == "native" else "Python loop"
        self.setup = f"onnxruntime CPU, {loop}, {engine.threads} threads, " + (
            shape if speculative else "no drafter"
        )
        if config.ngram:
            self.setup += f", prompt lookup of up to {config.ngram} tokens"

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
        stats = GenerationStats()
        config = self.engine.default_config(
            max_new_tokens=max_new_tokens,
            speculative=self.speculative,
            temperature=self.temperature,
            seed=0,
            **self.tree,
        )
        tokens = [t for chunk in self.engine.generate(prompt, config, stats) for t in chunk]
        return Decode(
            tokens,
            stats.decode_seconds,
            stats.target_passes,
            stats.target_passes * self.target_bytes + stats.drafter_calls * self.drafter_bytes,
            stats.draft_seconds,
            stats.verify_seconds,
        )


def eaglex_method_name(speculative: bool, label: str = "", ngram: int = 0) -> str:
    """ "eaglex plain", "eaglex EAGLE-3 + lookup int4 native", ...: the mode, then the label."""
    mode = ("EAGLE-3" if speculative else "plain") + (" + lookup" if ngram else "")
    return f"eaglex {mode} {label}".strip()


def eaglex_method(
    artifact: Path,
    threads: int,
    runtime: str,
    speculative: bool,
    temperature: float,
    label: str = "",
    reference: str | None = None,
    ngram: int = 0,
) -> EaglexMethod:
    """An EaglexMethod with an engine of its own (a recipe for bench/isolate.py; the parent process has
    checked the artifact's files already)."""
    engine = Engine.load(artifact, threads=threads, checksums=False, runtime=runtime)
    return EaglexMethod(engine, speculative, temperature, label, reference, ngram=ngram)


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token comes out (the end of the prefill)."""

    def __init__(self) -> None:
        self.calls, self.first = 0, 0.0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class TransformersMethod:
    """Hugging Face transformers `generate` on the torch CPU build, fp32, greedy, KV cache on.

    With `prompt_lookup`, assisted generation drafts by n-gram lookup in the prompt (10 tokens per step),
    transformers' own training-free speculative decoding."""

    def __init__(self, model_dir: Path, threads: int, stop_tokens: set[int], prompt_lookup: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.bytes_per_pass = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.stop_tokens, self.prompt_lookup = sorted(stop_tokens), prompt_lookup
        self.name = "transformers prompt lookup" if prompt_lookup else "transformers"
        version = __import__("transformers").__version__
        self.setup = f"transformers {version}, torch {torch.__version__}, fp32, {threads} threads" + (
            ", prompt_lookup_num_tokens=10" if prompt_lookup else ""
        )

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
        import torch

        clock = _FirstTokenClock()
        extra = {"prompt_lookup_num_tokens": 10} if self.prompt_lookup else {}
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_tokens,
                pad_token_id=self.stop_tokens[0],
                streamer=clock,
                **extra,
            )
        seconds = time.perf_counter() - clock.first
        tokens = out[0, len(prompt) :].tolist()
        # Plain generate streams one token per pass; assisted generation streams each accepted run at once.
        passes = clock.calls - 2
        return Decode(tokens, seconds, passes, passes * self.bytes_per_pass)
