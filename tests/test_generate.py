"""The draft-verify loop on a tiny exported model: lossless greedy decoding, KV-cache compaction, stop
rules and the context limit, checked against plain decoding and transformers.

A random drafter accepts almost nothing, so deep accepted paths are exercised with an oracle drafter whose
trees contain the target's own greedy continuation at random depths and sibling positions.
"""

from __future__ import annotations

import numpy as np
import pytest

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats
from eaglex.runtime.tree import DraftTree

MAX_CONTEXT = 160


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory):
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("generate")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    return export_artifact(
        model, tmp / "artifact", drafter_dir=drafter, max_context=MAX_CONTEXT, progress=lambda _: None
    )


@pytest.fixture(scope="module")
def engine(artifact):
    engine = Engine.load(artifact, threads=1)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    return engine


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 128, rng.integers(1, 12)).tolist() for _ in range(count)]


def run(engine: Engine, prompt: list[int], **settings) -> tuple[list[int], GenerationStats]:
    stats = GenerationStats()
    config = GenerationConfig(**{"max_new_tokens": 40, **settings})
    tokens = [t for chunk in engine.generate(prompt, config, stats) for t in chunk]
    return tokens, stats


def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


class OracleDrafter:
    """Drafts trees that contain the reference continuation down to a random depth, at a random sibling
    position, among random distractors: the accepted path is long and lands anywhere in the tree."""

    def __init__(self, reference: list[int], prompt_len: int, seed: int):
        self.reference, self.prompt_len = reference, prompt_len
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.seen, self.calls = 0, 0

    def extend(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> None:
        assert len(tokens) == len(features)
        self.seen += len(tokens)

    def propose(self, root: int, top_k: int, depth: int, total_tokens: int, *cuts: float) -> DraftTree:
        # cuts (min_path_probability, min_grow_probability): this stand-in's trees have no scores to cut
        emitted = self.seen - self.prompt_len + 1  # the root is reference[emitted - 1]
        assert self.reference[emitted - 1] == root
        truth = self.reference[emitted : emitted + int(self.rng.integers(0, depth + 1))]
        tokens, parents, depths = [root], [-1], [0]
        parent = 0
        for level, token in enumerate(truth, start=1):
            siblings = self.rng.integers(0, 128, int(self.rng.integers(0, 3))).tolist()
            siblings = [s for s in siblings if s != token]
            siblings.insert(int(self.rng.integers(0, len(siblings) + 1)), token)
            for s in siblings:
                tokens.append(s), parents.append(parent), depths.append(level)
                if s == token:
                    on_path = len(tokens) - 1
            for _ in range(int(self.rng.integers(0, 2))):  # a distractor grandchild off the path
                tokens.append(int(self.rng.integers(0, 128))), parents.append(len(tokens) - 2)
                depths.append(depths[-1] + 1)
            parent = on_path
        return DraftTree(np.array(tokens), np.array(parents), np.array(depths))


def test_plain_decoding_matches_transformers(engine, hf_model):
    for prompt in prompts(4):
        tokens, stats = run(engine, prompt, speculative=False)
        assert tokens == hf_greedy(hf_model, prompt, 40)
        assert stats.target_passes == 39  # one token per pass after the prefill


@pytest.mark.parametrize(
    ("top_k", "depth", "total_tokens"), [(1, 5, 6), (4, 4, 16), (8, 5, 60), (16, 3, 128)]
)
def test_speculative_greedy_equals_plain(engine, top_k, depth, total_tokens):
    for prompt in prompts(5, seed=top_k):
        plain, _ = run(engine, prompt, speculative=False)
        spec, stats = run(engine, prompt, top_k=top_k, depth=depth, total_tokens=total_tokens)
        assert spec == plain
        assert stats.drafter_calls == depth * stats.target_passes


@pytest.mark.parametrize("seed", range(6))
def test_oracle_trees_are_accepted_and_the_cache_is_compacted(engine, seed):
    prompt = prompts(6, seed=10)[seed]
    plain, _ = run(engine, prompt, speculative=False)
    plain_cache = engine.target.cache.data.copy()

    engine_drafter, engine.drafter = engine.drafter, OracleDrafter(plain, len(prompt), seed)
    try:
        spec, stats = run(engine, prompt, top_k=4, depth=6, total_tokens=40)
    finally:
        engine.drafter = engine_drafter
    assert spec == plain
    assert stats.acceptance_length > 2.0, "the oracle's paths should be accepted deep"
    filled = len(prompt) + len(plain) - 1  # every token but the last emitted one went through the target
    np.testing.assert_allclose(
        engine.target.cache.data[..., :filled, :], plain_cache[..., :filled, :], atol=1e-5
    )


def test_stop_token_inside_an_accepted_path(engine):
    prompt = prompts(1, seed=3)[0]
    plain, _ = run(engine, prompt, speculative=False)
    stop_at = next(i for i in range(5, len(plain)) if plain[i] not in plain[:i])
    saved_stop, saved_drafter = engine.stop_tokens, engine.drafter
    engine.stop_tokens = {plain[stop_at]}
    engine.drafter = OracleDrafter(plain, len(prompt), seed=0)
    try:
        spec, stats = run(engine, prompt, top_k=2, depth=8, total_tokens=30)
    finally:
        engine.stop_tokens, engine.drafter = saved_stop, saved_drafter
    assert spec == plain[: stop_at + 1]
    assert stats.stop_reason == "stop token"


def test_one_token_prompt_and_one_new_token(engine, hf_model):
    tokens, stats = run(engine, [5], max_new_tokens=1)
    assert tokens == hf_greedy(hf_model, [5], 1)
    assert stats.target_passes == 0 and stats.stop_reason == "length"
    spec, _ = run(engine, [5], max_new_tokens=30, top_k=4, depth=3, total_tokens=12)
    assert spec == hf_greedy(hf_model, [5], 30)


def test_context_limit_stops_generation(engine, hf_model):
    prompt = np.random.default_rng(7).integers(3, 128, MAX_CONTEXT - 13).tolist()
    spec, stats = run(engine, prompt, max_new_tokens=50, top_k=8, depth=5, total_tokens=60)
    assert len(spec) == MAX_CONTEXT - len(prompt)
    assert stats.stop_reason == "context limit"
    assert spec == hf_greedy(hf_model, prompt, len(spec))


def test_sessions_spin_within_a_call_and_sleep_after_it(engine):
    """Both graphs' workers spin between operators (a sleeping worker costs a wake-up per operator) and
    stop when a call returns: the target and the drafter take turns on the same cores, and threads that
    spun on after their call held the cores the other needed (EAGLE-3 on 2 cores: 28 instead of 54
    tok/s, docs/BENCHMARKS.md)."""
    for session in (engine.target.session, engine.drafter.session.session):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_a_second_concurrent_generation_is_refused_not_corrupted(engine):
    """Two interleaved generators, or two threads, on one Engine: the second fails clearly and the first
    still decodes exactly what it decodes alone."""
    import threading

    from eaglex.errors import EaglexError

    prompt = prompts(1, seed=7)[0]
    alone, _ = run(engine, prompt)
    first = engine.generate(prompt, GenerationConfig(max_new_tokens=40))
    tokens = list(next(first))
    with pytest.raises(EaglexError, match="already generating"):
        next(engine.generate(prompts(1, seed=8)[0], GenerationConfig(max_new_tokens=40)))
    tokens += [t for chunk in first for t in chunk]
    assert tokens == alone
    # Closing a half-consumed generator frees the engine.
    started = engine.generate(prompt, GenerationConfig(max_new_tokens=40))
    next(started)
    started.close()
    assert run(engine, prompt)[0] == alone

    results: list[object] = []

    def worker() -> None:
        try:
            results.append(run(engine, prompt)[0])
        except EaglexError as e:
            results.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whatever the interleaving, every finished generation is the lone one; the others were refused.
    assert all(r == alone or isinstance(r, EaglexError) for r in results)
    assert any(r == alone for r in results)
