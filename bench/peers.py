"""The peers `eaglex bench --compare` runs on the same weights and prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from eaglex.bench.isolate import Recipe
from eaglex.bench.methods import TransformersMethod
from eaglex.errors import EaglexError
from eaglex.extras import require
from eaglex.runtime.manifest import Manifest

# Each peer with what it needs installed (keys of eaglex.extras.EXTRAS): genai's model builder reads the
# Hugging Face weights with torch and transformers.
PEERS: dict[str, tuple[str, ...]] = {
    "transformers": ("export",),
    "onnxruntime-genai": ("onnxruntime-genai", "export"),
    "llama.cpp": ("llama.cpp",),
}


def parse_peers(names: str) -> list[str]:
    """The comma-separated peer names of `--peers`, checked (unknown names, missing packages) up front."""
    peers = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in peers if name not in PEERS]
    if unknown or not peers:
        raise EaglexError(f"--peers {names!r}: choose from {', '.join(PEERS)}")
    needs = dict.fromkeys(need for name in peers for need in PEERS[name])
    require(needs, f"--compare with {', '.join(peers)}", " (or leave that peer out with --peers)")
    return peers


def peer_recipes(
    manifest: Manifest,
    threads: int,
    peers: Sequence[str] = tuple(PEERS),
    progress: Callable[[str], object] = print,
) -> list[Recipe]:
    """The peers' methods as recipes (bench/isolate.py): models are built or fetched here, once, and each
    method is loaded where it will run."""
    source = Path(manifest.target.source)
    stop = set(manifest.tokens.eos_token_ids)
    if {"transformers", "onnxruntime-genai"} & set(peers) and not (source / "config.json").is_file():
        raise EaglexError(
            f"--compare needs the target's Hugging Face folder {source} (named in the manifest)"
        )
    recipes: list[Recipe] = []
    if "transformers" in peers:
        recipes += [partial(TransformersMethod, source, threads, stop, lookup) for lookup in (False, True)]
    if "onnxruntime-genai" in peers:
        from eaglex.bench.genai import genai_recipes

        recipes += genai_recipes(source, threads, stop, progress)
    if "llama.cpp" in peers:
        from eaglex.bench.llamacpp import llamacpp_recipes

        recipes += llamacpp_recipes(manifest, threads)
    return recipes
