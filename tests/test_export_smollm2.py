"""The exporter on the real SmolLM2-135M-Instruct: the same parity as the tiny models, on 30 real layers."""

from __future__ import annotations

import json

import pytest

# Shared with the tiny-model tests (pytest puts tests/ on sys.path).
from test_export_tiny import TREE_PARENTS, check_target_parity


@pytest.mark.smollm2
def test_smollm2_export_matches_transformers(smollm2_dir, smollm2_artifact):
    from tokenizers import Tokenizer

    model_dir, artifact = smollm2_dir, smollm2_artifact
    manifest = json.loads((artifact / "manifest.json").read_text())

    assert manifest["target"]["feature_layers"] == [2, 15, 27]
    assert manifest["tokens"]["eos_token_ids"] == [2]  # <|im_end|>: config eos and chat end of turn
    assert manifest["tokens"]["has_chat_template"]

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = tokenizer.encode("The capital of France is a city called").ids
    tree_tokens = tokenizer.encode(" Paris, the city of light").ids[: len(TREE_PARENTS)]
    assert len(prompt) >= 7 and len(tree_tokens) == len(TREE_PARENTS)
    check_target_parity(model_dir, artifact, prompt, tree_tokens, TREE_PARENTS, atol=1e-3)
