"""The exporter on the real SmolLM2-135M-Instruct: the same parity as the tiny models, on 30 real layers."""

from __future__ import annotations

import json
import time

import pytest

# Shared with the tiny-model tests (pytest puts tests/ on sys.path).
from test_export_tiny import TREE_PARENTS, check_target_parity

from eaglex.exporter.checkpoints import write_random_drafter
from eaglex.exporter.export import export_artifact


@pytest.mark.smollm2
def test_smollm2_export_matches_transformers(tmp_path):
    from tokenizers import Tokenizer

    from eaglex.exporter.fetch import fetch_smollm2

    model_dir = fetch_smollm2()
    drafter_dir = write_random_drafter(model_dir, tmp_path / "drafter")
    started = time.perf_counter()
    artifact = export_artifact(model_dir, tmp_path / "artifact", drafter_dir)
    seconds = time.perf_counter() - started
    manifest = json.loads((artifact / "manifest.json").read_text())
    sizes = ", ".join(f"{name} {entry['bytes'] / 1e6:.1f}" for name, entry in manifest["files"].items())
    print(f"SmolLM2 export: {seconds:.1f} s; MB: {sizes}")

    assert manifest["target"]["feature_layers"] == [2, 15, 27]
    assert manifest["tokens"]["eos_token_ids"] == [2]  # <|im_end|>: config eos and chat end of turn
    assert manifest["tokens"]["has_chat_template"]

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = tokenizer.encode("The capital of France is a city called").ids
    tree_tokens = tokenizer.encode(" Paris, the city of light").ids[: len(TREE_PARENTS)]
    assert len(prompt) >= 7 and len(tree_tokens) == len(TREE_PARENTS)
    check_target_parity(model_dir, artifact, prompt, tree_tokens, TREE_PARENTS, atol=1e-3)
