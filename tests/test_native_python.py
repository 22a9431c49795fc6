"""The Python API on libeaglex's loop (runtime/native.py): Engine(runtime="native") must stream the same
tokens, pass by pass, as the Python loop, release the engine when a stream is closed early, refuse what
the C loop cannot do, and fall back to Python under "auto" where the library is not built."""

from __future__ import annotations

import threading

import pytest
from test_native import PROMPTS, TREES, artifact, native_build  # noqa: F401 (fixtures)

from eaglex.errors import EaglexError
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats
from eaglex.runtime.manifest import load
from eaglex.runtime.native import choose, unsupported

NAMES = ("top_k", "depth", "total_tokens")


@pytest.fixture(scope="module")
def engines(native_build, artifact) -> tuple[Engine, Engine]:  # noqa: F811
    python, native = (Engine.load(artifact, threads=1, runtime=r) for r in ("python", "native"))
    assert (python.runtime, native.runtime) == ("python", "native")
    for engine in (python, native):
        engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    return python, native


def passes(engine: Engine, prompt: list[int], **overrides) -> tuple[list[list[int]], GenerationStats]:
    stats = GenerationStats()
    return list(engine.generate(prompt, engine.default_config(**overrides), stats)), stats


def tokens(chunks: list[list[int]]) -> list[int]:
    return [token for chunk in chunks for token in chunk]


@pytest.mark.parametrize("tree", [None, *TREES])
def test_native_streams_the_python_loops_passes(engines, tree):
    python, native = engines
    settings = {"speculative": False} if tree is None else dict(zip(NAMES, tree, strict=True))
    for prompt in PROMPTS:
        expected, want = passes(python, prompt, max_new_tokens=40, **settings)
        got, stats = passes(native, prompt, max_new_tokens=40, **settings)
        assert got == expected  # the same tokens, delivered in the same passes
        assert (stats.new_tokens, stats.target_passes, stats.verified_tokens, stats.stop_reason) == (
            want.new_tokens, want.target_passes, want.verified_tokens, want.stop_reason
        )  # fmt: skip
        assert stats.accepted_lengths == want.accepted_lengths
        # decode_seconds in parts, as the Python loop reports them (tune's round costs read them)
        assert stats.verify_seconds > 0 and (stats.draft_seconds > 0 or tree is None)
        assert stats.draft_seconds + stats.verify_seconds < stats.decode_seconds


@pytest.mark.parametrize("tree", [None, (4, 3, 12)])
def test_prompt_lookup_grafts_the_same_trees(engines, tree):
    """--ngram on libeaglex (ABI 2): the same looked-up paths, grafted the same way, accepted the same."""
    python, native = engines
    settings = {"speculative": False} if tree is None else dict(zip(NAMES, tree, strict=True))
    grafted = 0
    for phrase in PROMPTS:
        prompt = [*phrase, 40, 41] * 3 + phrase[:1]  # a continuation that repeats it is found by lookup
        expected, _ = passes(python, prompt, max_new_tokens=40, ngram=6, **settings)
        got, stats = passes(native, prompt, max_new_tokens=40, ngram=6, **settings)
        assert got == expected
        grafted += stats.verified_tokens - stats.target_passes  # accepted beyond the bonus tokens
    assert grafted > 0, "repetitive prompts should get looked-up drafts accepted"


def test_sampling_is_reproducible_for_a_seed(engines):
    _, native = engines
    runs = [passes(native, PROMPTS[1], max_new_tokens=30, temperature=0.8, seed=s)[0] for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_closing_a_stream_early_frees_the_engine(engines):
    python, native = engines
    config = native.default_config(max_new_tokens=40)
    stream = native.generate(PROMPTS[0], config)
    first = next(stream)
    with pytest.raises(EaglexError, match="already generating"):
        next(native.generate(PROMPTS[1], config))
    stream.close()  # cancels the C loop at its next pass and joins its thread
    assert not any(t.name == "eaglex-native" for t in threading.enumerate())
    again = [t for chunk in native.generate(PROMPTS[0], config) for t in chunk]
    assert again[: len(first)] == first
    assert again == [
        t for chunk in python.generate(PROMPTS[0], python.default_config(max_new_tokens=40)) for t in chunk
    ]


def test_what_the_c_loop_cannot_do_is_refused(artifact):  # noqa: F811
    manifest = load(artifact, checksums=False)
    assert unsupported(manifest, "onnxruntime", "cpu") is None
    assert "CPU only" in unsupported(manifest, "onnxruntime", "cuda")
    assert "TensorRT" in unsupported(manifest, "tensorrt", "cpu")
    with pytest.raises(EaglexError, match="CPU only"):
        choose("native", manifest, "onnxruntime", "cuda", 1)


def test_auto_falls_back_to_python_without_a_library(artifact, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("EAGLEX_CACHE", str(tmp_path))  # no build in this cache
    monkeypatch.delenv("EAGLEX_LIBRARY", raising=False)
    assert Engine.load(artifact, threads=1, runtime="auto").runtime == "python"
    monkeypatch.setenv("EAGLEX_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(EaglexError, match="cannot load libeaglex"):
        Engine.load(artifact, threads=1, runtime="auto")


@pytest.mark.parametrize(
    ("tree", "cuts"), [((16, 2, 40), (0.02, 0.0)), ((4, 5, 16), (0.0, 0.2)), ((8, 5, 24), (0.015, 0.015))]
)
def test_probability_cuts_shape_the_same_trees(engines, tree, cuts):
    """The tree's cuts on libeaglex (ABI 3): the same rounds and drafter calls as the Python loop, lossless
    in both. The random drafter's top candidates have probability 0.02-0.025, so these cuts change rounds:
    accepted drafts are cut, or levels are not grown."""
    python, native = engines
    tree = dict(zip(NAMES, tree, strict=True))
    cut = {"min_path_probability": cuts[0], "min_grow_probability": cuts[1]}
    changed = 0
    for prompt in PROMPTS:
        plain, _ = passes(python, prompt, max_new_tokens=40, speculative=False)
        whole, uncut = passes(python, prompt, max_new_tokens=40, **tree)
        expected, want = passes(python, prompt, max_new_tokens=40, **tree, **cut)
        got, stats = passes(native, prompt, max_new_tokens=40, **tree, **cut)
        assert got == expected and tokens(got) == tokens(plain) == tokens(whole)
        assert (stats.target_passes, stats.drafter_calls) == (want.target_passes, want.drafter_calls)
        changed += want.accepted_lengths != uncut.accepted_lengths or want.drafter_calls < uncut.drafter_calls
    assert changed, "the cuts should change some rounds"
