"""Quantized SmolLM2 (the session's float32 artifact quantized to int8 and int4, target and drafter):
speculative greedy output equals the quantized target's own plain greedy output, the agreement with
float32 is what a user can live with, and a fresh `eaglex run` of the int4 artifact stays under 400 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eaglex.bench.agreement import artifact_scorer, measure_agreement
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

pytestmark = pytest.mark.smollm2

PROMPTS = json.loads((Path(__file__).parent / "data" / "prompts.json").read_text())
TREES = [(1, 6, 7), (4, 3, 12), (8, 4, 24)]  # (top_k, depth, total_tokens), one per prompt
RSS_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@pytest.fixture(scope="module")
def int4(smollm2_int4_artifact) -> Engine:
    return Engine.load(smollm2_int4_artifact, threads=2)


def generate(engine: Engine, prompt: list[int], **settings) -> list[int]:
    config = engine.default_config(max_new_tokens=40, **settings)
    return [t for chunk in engine.generate(prompt, config, GenerationStats()) for t in chunk]


@pytest.mark.parametrize("index", range(len(TREES)))
def test_int4_speculative_greedy_equals_int4_plain(int4, index):
    prompt = int4.encode(PROMPTS[index]["text"], chat=PROMPTS[index]["chat"])
    top_k, depth, total_tokens = TREES[index]
    spec = generate(int4, prompt, top_k=top_k, depth=depth, total_tokens=total_tokens)
    assert spec == generate(int4, prompt, speculative=False)


def test_agreement_with_float32(smollm2_artifact, smollm2_quantized, int4):
    reference = Engine.load(smollm2_artifact, threads=2)
    int8 = Engine.load(smollm2_quantized("int8"), threads=2)
    prompts = [(p["text"], p["chat"]) for p in PROMPTS[3:6]]
    scorers = {"int8": artifact_scorer(int8), "int4": artifact_scorer(int4)}
    result = measure_agreement(scorers, reference, prompts, new_tokens=24)
    # Measured on 20 MT-bench turns: int8 with int8 activations 95.5% and 0.004 nats (float32 activations,
    # now the default, do better), int4 64% and 0.39 nats (its float32 reference is itself dequantized
    # Q4_1, which int4 blocks with integer zero points cannot represent).
    assert result["int8"].greedy_match >= 0.95 and result["int8"].mean_kl < 0.02
    assert result["int4"].greedy_match >= 0.5 and result["int8"].mean_kl < result["int4"].mean_kl < 1.0


def test_int4_run_peak_rss_under_400_mb(smollm2_int4_artifact):
    run = [
        sys.executable,
        "-m",
        "eaglex.cli",
        "run",
        str(smollm2_int4_artifact),
        "--prompt",
        "Hello!",
        "--chat",
    ]
    # From a small wrapper process: a child forked from this big test process would count its pages.
    out = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *run, "--max-new-tokens", "16"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert int(out.split()[-1]) / 1024 < 400
