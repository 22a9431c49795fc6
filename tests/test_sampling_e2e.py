"""Speculative sampling keeps the target's distribution, end to end on a tiny exported model.

The trees hold the target's most likely tokens (two levels deep), so drafts are accepted, rejected and
accepted deep in the same run. The joint distribution of the 2nd and 3rd generated tokens is compared
with the exact one, computed from transformers, by a chi-square test; the same test must reject a
deliberately flawed acceptance rule.
"""

from __future__ import annotations

import numpy as np
import pytest
from speculative_stats import chi_square, critical_value, flawed_rule

import eaglex.runtime.generate as generate_module
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.tree import DraftTree

PROMPT = [5, 17, 42]
TEMPERATURE = 0.3
RUNS = 4000


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    from eaglex.exporter.export import export_artifact

    artifact = export_artifact(
        tiny_model("llama"),
        tmp_path_factory.mktemp("sampling") / "artifact",
        max_context=160,
        progress=lambda _: None,
    )
    engine = Engine.load(artifact, threads=1)
    engine.stop_tokens = set()
    return engine


@pytest.fixture(scope="module")
def exact(tiny_model):
    """p(x1 | prompt), p(x2 | prompt x1) and p(x3 | prompt x1 x2) for every x1, x2, from transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    with torch.inference_mode():
        x1 = torch.arange(vocab)[:, None]
        x2 = torch.arange(vocab)[None, :, None].expand(vocab, vocab, 1)
        seq2 = torch.cat([torch.tensor(PROMPT).expand(vocab, -1), x1], 1)
        seq3 = torch.cat([seq2[:, None].expand(-1, vocab, -1), x2], 2).reshape(vocab * vocab, -1)
        logits1 = model(torch.tensor([PROMPT])).logits[0, -1]
        logits2 = model(seq2).logits[:, -1]
        logits3 = model(seq3).logits[:, -1].reshape(vocab, vocab, vocab)
    p1, p2, p3 = (torch.softmax(x / TEMPERATURE, -1).double().numpy() for x in (logits1, logits2, logits3))
    return p1, p2, p3


class TopTokensDrafter:
    """Trees of the target's 3 likeliest next tokens, each with its 2 likeliest children."""

    def __init__(self, p2: np.ndarray, p3: np.ndarray):
        self.p2, self.p3 = p2, p3
        self.reset()

    def reset(self) -> None:
        self.history: list[int] = []
        self.calls = 0

    def extend(self, tokens: np.ndarray, features: np.ndarray, top_k: int) -> None:
        self.history += tokens.tolist()

    def propose(self, root: int, top_k: int, depth: int, total_tokens: int, *cuts: float) -> DraftTree:
        # cuts (min_path_probability, min_grow_probability): this stand-in's trees have no scores to cut
        generated = self.history[len(PROMPT) - 1 :]  # x1, x2, ...
        if len(generated) == 1:
            children = np.argsort(-self.p2[root])[:3]
            tokens, parents = [root, *children], [-1, 0, 0, 0]
            for i, child in enumerate(children):
                grandchildren = np.argsort(-self.p3[root, child])[:2]
                tokens += grandchildren.tolist()
                parents += [i + 1, i + 1]
        else:  # x2 came alone as a bonus token: one more level suffices to reach x3
            tokens, parents = [root, *np.argsort(-self.p3[generated[0], root])[:3]], [-1, 0, 0, 0]
        depths = [0] * len(tokens)
        for i in range(1, len(tokens)):
            depths[i] = depths[parents[i]] + 1
        return DraftTree(np.array(tokens), np.array(parents), np.array(depths))


def second_and_third_tokens(engine: Engine, exact, seed: int) -> np.ndarray:
    _, p2, p3 = exact
    vocab = len(p2)
    saved, engine.drafter = engine.drafter, TopTokensDrafter(p2, p3)
    counts = np.zeros((vocab, vocab), dtype=np.int64)
    try:
        for run in range(RUNS):
            config = GenerationConfig(
                max_new_tokens=3, temperature=TEMPERATURE, seed=seed * RUNS + run, top_k=1
            )
            tokens = [t for chunk in engine.generate(PROMPT, config) for t in chunk]
            counts[tokens[1], tokens[2]] += 1
    finally:
        engine.drafter = saved
    return counts


def exact_second_and_third(exact) -> np.ndarray:
    p1, p2, p3 = exact
    return np.einsum("a,ab,abc->bc", p1, p2, p3)


def test_speculative_sampling_keeps_the_target_distribution(engine, exact):
    stat, df = chi_square(second_and_third_tokens(engine, exact, seed=2), exact_second_and_third(exact))
    assert df >= 40
    assert stat < critical_value(df), (stat, df, critical_value(df))


def test_a_flawed_acceptance_rule_is_detected(engine, exact, monkeypatch):
    monkeypatch.setattr(generate_module, "accept_sampling", flawed_rule(renormalise=False))
    stat, df = chi_square(second_and_third_tokens(engine, exact, seed=2), exact_second_and_third(exact))
    assert stat > critical_value(df), (stat, df, critical_value(df))
