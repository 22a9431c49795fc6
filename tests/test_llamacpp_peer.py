"""The llama.cpp peer (bench/llamacpp.py), when llama-cpp-python is installed (extra eaglex[peers]): its
GGUFs hold the same weights as the eaglex artifact, so llama.cpp f32 decodes what eaglex fp32 decodes."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from eaglex.bench.llamacpp import LlamaCppModel, gguf_path, llamacpp_recipes
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def engine(smollm2_artifact) -> Engine:
    return Engine.load(smollm2_artifact, threads=2)


def test_f32_gguf_decodes_what_eaglex_fp32_decodes(engine):
    prompt = engine.encode("Give me three tips for a good night's sleep.", chat=True)
    config = engine.default_config(max_new_tokens=24, speculative=False)
    ours = [t for chunk in engine.generate(prompt, config, GenerationStats()) for t in chunk]
    run = LlamaCppModel(gguf_path("f32"), threads=2).decode(prompt, 24, engine.stop_tokens)
    assert run.tokens == ours
    assert run.prefill_seconds > 0 and run.tokens_per_second > 0


def test_q4_1_method_and_teacher_forced_logits(engine):
    (recipe,) = llamacpp_recipes(engine.manifest, threads=2, kinds=("q4_1",))
    method = recipe()
    prompt = engine.encode("What is the capital of Australia?", chat=True)
    decode = method(prompt, 8)
    assert len(decode.tokens) == 8 and decode.passes == 7
    assert decode.weight_bytes == 7 * method.model.weight_bytes
    scorer = LlamaCppModel(gguf_path("q4_1"), threads=2, n_ctx=256, logits_all=True)
    logits = scorer.teacher_forced_logits(prompt + decode.tokens, len(prompt))
    assert logits.shape == (8, engine.manifest.target.vocab_size)
    # Row i predicts token i: the argmaxes are the greedy tokens (batched and one-by-one evaluation may
    # round differently, so allow a near-tie or two; rows shifted by one would match almost none).
    assert sum(a == b for a, b in zip(logits.argmax(-1).tolist(), decode.tokens, strict=True)) >= 6
