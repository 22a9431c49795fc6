"""The peers `eaglex bench --compare` runs on the same weights and prompts."""

from __future__ import annotations

import sys
from pathlib import Path

from eaglex.bench.methods import Method, TransformersMethod
from eaglex.errors import EaglexError
from eaglex.runtime.engine import Engine


def peer_methods(engine: Engine, threads: int) -> list[Method]:
    source = Path(engine.manifest.target.source)
    if not (source / "config.json").is_file():
        raise EaglexError(
            f"--compare needs the target's Hugging Face folder {source} (named in the manifest)"
        )
    try:
        methods: list[Method] = [
            TransformersMethod(source, threads, engine.stop_tokens),
            TransformersMethod(source, threads, engine.stop_tokens, prompt_lookup=True),
        ]
    except ImportError:
        raise EaglexError("--compare needs torch and transformers: pip install 'eaglex[export]'") from None
    try:
        from eaglex.bench.llamacpp import llamacpp_methods
    except ImportError:
        print("llama.cpp peer skipped: pip install 'eaglex[peers]' to add it", file=sys.stderr)
    else:
        methods += llamacpp_methods(engine, threads)
    return methods
