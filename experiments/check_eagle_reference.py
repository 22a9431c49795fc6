"""Checks that a drafter written by `eaglex train-drafter` loads in the SafeAILab EAGLE reference and computes
what eaglex computes.

    git clone https://github.com/SafeAILab/EAGLE /tmp/EAGLE
    python experiments/check_eagle_reference.py /tmp/EAGLE DRAFTER_DIR TARGET_DIR

Loads DRAFTER_DIR with the reference's own config class and `Model` (eagle/model/cnets.py), runs one pass
over random target features and tokens there and in eaglex's `Eagle3Drafter`, and prints the largest
difference of the hidden outputs and whether the draft argmaxes agree.
"""

from __future__ import annotations

import sys

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.train.ttt import TTTAttention


def main(eagle_repo: str, drafter_dir: str, target_dir: str) -> None:
    sys.path.insert(0, f"{eagle_repo}/eagle/model")
    from cnets import Model  # the reference's EAGLE-3 drafter
    from configs import EConfig

    config = EConfig.from_pretrained(drafter_dir)
    # The reference targets transformers 4.x, where a config without rope_scaling has None there;
    # transformers 5 fills in {"rope_type": "default", ...}, which the reference cannot read.
    config.rope_scaling = None
    reference = Model(config, load_emb=False)
    state = safetensors.torch.load_file(f"{drafter_dir}/model.safetensors")
    result = reference.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    # The reference takes embed_tokens from the target, as eaglex does.
    print(f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    reference.embed_tokens.weight.data = target.get_input_embeddings().weight.data.clone()
    ours = load_drafter(drafter_dir, read_target_config(target_dir))

    rows = 16
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, rows, ours.fc.in_features, generator=generator) * 3
    tokens = torch.randint(0, config.vocab_size, (1, rows), generator=generator)
    with torch.no_grad():
        theirs, _ = reference.eval()(features, input_ids=tokens, use_cache=True)
        attend = TTTAttention(ours.config.num_heads, ours.config.num_kv_heads, ours.config.head_dim)
        mine = ours.step(
            target.get_input_embeddings()(tokens), ours.fc(features), torch.arange(rows)[None], attend
        )
        same_argmax = torch.equal(
            reference.lm_head(reference.norm(theirs)).argmax(-1), ours.draft_logits(mine).argmax(-1)
        )
    difference, scale = float((theirs - mine).abs().max()), float(mine.abs().max())
    print(f"hidden max |difference| {difference:.2e} (max |hidden| {scale:.1f})")
    print(f"draft argmax agrees: {same_argmax}; d2t identical: {torch.equal(reference.d2t, ours.d2t)}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
