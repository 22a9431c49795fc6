"""onnxruntime-genai as a peer: the same Hugging Face weights, built by genai's own model builder.

How it is built and run (`GenaiMethod`), so anyone can rerun it: onnxruntime-genai (pip install
'eaglex[peers]'; its builder reads the weights with torch and transformers, extra eaglex[export]),

    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32|int4 -e cpu -c CACHE
        [--extra_options accuracy_level=1]

once per kind, cached under ~/.cache/eaglex/genai. Kinds: fp32; int4 with the builder's CPU defaults
(symmetric blocks of 32, accuracy_level 4: activations quantized to int8 inside MatMulNBits); int4 with
accuracy_level 1 (fp32 activations, as eaglex's lossless int4). At run time the model's
genai_config.json is overlaid with `model.decoder.session_options.intra_op_num_threads = threads` (and one
inter-op thread), then decoded greedily (do_sample false) from the same token ids, one
`generate_next_token` per token, stopping at the artifact's stop tokens or max_new_tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from eaglex.bench.methods import Decode
from eaglex.errors import EaglexError
from eaglex.exporter.fetch import cache_dir


@dataclass(frozen=True)
class GenaiKind:
    name: str  # as in the results table: "onnxruntime-genai " + name
    precision: str  # the builder's -p
    accuracy_level: int | None  # --extra_options accuracy_level=N; None: the builder's default

    def builder_args(self, hf_dir: Path, out: Path, cache: Path) -> list[str]:
        args = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
        args += ["-p", self.precision, "-e", "cpu", "-c", str(cache)]
        if self.accuracy_level is not None:
            args += ["--extra_options", f"accuracy_level={self.accuracy_level}"]
        return args


KINDS = {
    kind.name: kind
    for kind in (
        GenaiKind("fp32", "fp32", None),
        GenaiKind("int4", "int4", None),  # the builder's CPU default: accuracy_level 4, int8 activations
        GenaiKind("int4 fp32-act", "int4", 1),
    )
}


def model_dir(hf_dir: Path, kind: GenaiKind, progress: Callable[[str], object] = print) -> Path:
    """genai's build of `hf_dir` in `kind`, made on first use (a minute or two) and cached."""
    folder = cache_dir() / "genai" / hf_dir.name
    out = folder / kind.name.replace(" ", "-")
    if (out / "genai_config.json").exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    args = kind.builder_args(hf_dir, partial, folder / "builder-cache")
    progress(f"building onnxruntime-genai {kind.name} model of {hf_dir.name} (once): {' '.join(args[1:])}")
    started = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0 or not (partial / "genai_config.json").exists():
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EaglexError(f"onnxruntime-genai's model builder failed on {hf_dir}: {last[0]}")
    partial.rename(out)  # a folder under its final name is always a complete build
    progress(f"built {out} in {time.perf_counter() - started:.0f} s")
    return out


def session_overlay(threads: int) -> dict:
    """What eaglex changes in genai_config.json: the decoder's threads (genai's default is all cores)."""
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return {"model": {"decoder": {"session_options": options}}}


def describe(folder: Path, kind: GenaiKind, threads: int, version: str) -> str:
    """The `setup` line of results.json: version, builder settings, the session options in effect."""
    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    options = {
        **decoder.get("session_options", {}),
        **session_overlay(threads)["model"]["decoder"]["session_options"],
    }
    level = "builder default (4)" if kind.accuracy_level is None else str(kind.accuracy_level)
    quant = f", accuracy_level {level}" if kind.precision == "int4" else ""
    return (
        f"onnxruntime-genai {version}, builder -p {kind.precision} -e cpu{quant}, {decoder['filename']}, "
        f"session_options {json.dumps(options, sort_keys=True)}, greedy (do_sample false)"
    )


class GenaiMethod:
    """onnxruntime-genai plain greedy decoding as an `eaglex bench` method."""

    def __init__(self, folder: Path, kind: GenaiKind, threads: int, stop_tokens: Collection[int]):
        import onnxruntime_genai as og

        from eaglex.exporter.quantize import streamed_weight_bytes

        self.og, self.stop_tokens = og, set(stop_tokens)
        config = og.Config(str(folder))
        config.overlay(json.dumps(session_overlay(threads)))
        self.model = og.Model(config)
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.bytes_per_pass = streamed_weight_bytes(folder / decoder["filename"])
        self.name = f"onnxruntime-genai {kind.name}"
        self.setup = describe(folder, kind, threads, og.__version__)

    def __call__(self, prompt: list[int], max_new_tokens: int) -> Decode:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + max_new_tokens)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(prompt)  # the prefill
        tokens: list[int] = []
        first = 0.0
        while not generator.is_done() and len(tokens) < max_new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if len(tokens) == 1:
                first = time.perf_counter()
            if tokens[-1] in self.stop_tokens:
                break
        passes = len(tokens) - 1
        return Decode(tokens, time.perf_counter() - first, passes, passes * self.bytes_per_pass)


def genai_recipes(
    hf_dir: Path, threads: int, stop_tokens: Collection[int], progress: Callable[[str], object] = print
) -> list[Callable[[], GenaiMethod]]:
    """One recipe (bench/isolate.py) per kind; genai's builds are made here, on first use."""
    return [
        partial(GenaiMethod, model_dir(hf_dir, kind, progress), kind, threads, set(stop_tokens))
        for kind in KINDS.values()
    ]
