"""Lossless on the real model: greedy `eaglex` output equals transformers' greedy `generate`, token for
token, on 20 varied prompts (chat and plain) of 128 new tokens, for several tree shapes.

The drafter is randomly initialised (official format) until a trained one ships, so this checks that
drafting never changes the output; deep accepted paths are covered by the oracle tests in
test_generate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

pytestmark = pytest.mark.smollm2

NEW_TOKENS = 128
PROMPTS = json.loads((Path(__file__).parent / "data" / "prompts.json").read_text())
# (top_k, depth, total_tokens), or None for plain decoding; prompts cycle through them.
TREES = [(1, 6, 7), (10, 6, 60), (4, 4, 16), None, (6, 3, 12)]


@pytest.fixture(scope="module")
def engine(smollm2_artifact) -> Engine:
    return Engine.load(smollm2_artifact, threads=2)


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int], stop_tokens: set[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop_tokens),
            pad_token_id=sorted(stop_tokens)[0],
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_greedy_output_equals_transformers(engine, hf_model, index):
    prompt = engine.encode(PROMPTS[index]["text"], chat=PROMPTS[index]["chat"])
    tree = TREES[index % len(TREES)]
    names = ("top_k", "depth", "total_tokens")
    settings = {"speculative": False} if tree is None else dict(zip(names, tree, strict=True))
    stats = GenerationStats()
    config = engine.default_config(max_new_tokens=NEW_TOKENS, **settings)
    ours = [t for chunk in engine.generate(prompt, config, stats) for t in chunk]
    assert ours == hf_greedy(hf_model, prompt, engine.stop_tokens)
    assert stats.new_tokens == len(ours)


def test_edge_cases_on_the_real_model(engine, hf_model):
    """A one-token prompt, a single new token, and a sampled run that stays within the vocabulary."""
    for prompt, new_tokens in (([engine.manifest.tokens.bos_token_id or 1], 24), (engine.encode("Hello"), 1)):
        config = engine.default_config(max_new_tokens=new_tokens, top_k=4, depth=3, total_tokens=16)
        ours = [t for chunk in engine.generate(prompt, config) for t in chunk]
        assert ours == hf_greedy(hf_model, prompt, engine.stop_tokens, new_tokens)
    config = engine.default_config(max_new_tokens=16, temperature=0.8, top_p=0.9, seed=1)
    sampled = [t for chunk in engine.generate(engine.encode("Hello", chat=True), config) for t in chunk]
    assert 1 <= len(sampled) <= 16 and all(0 <= t < engine.manifest.target.vocab_size for t in sampled)
