"""TensorRT for RTX's graphs against the default graphs on a real model, on the CPU.

    python experiments/check_rtx_graphs.py DEFAULT_ARTIFACT PLUGIN_ARTIFACT [--new-tokens 48]

Both artifacts from the same model and drafter (eaglex export, with and without --backend tensorrt).
The plugin-flavoured graphs are rewritten as `eaglex build --flavour tensorrt-rtx` rewrites them
(standard Attention, opset 23) and run on onnxruntime with the KV cache laid out as the GPU backend keeps
it (tests/test_rtx.py's RowCacheSession). Prints the prefill logit difference against the default target
and whether greedy EAGLE-3 output through them equals plain greedy output of the default artifact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_rtx import rows_session

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats

PROMPTS = (
    "Why is the sky blue?",
    "Write a Python function that reverses a list.",
    "What is 17 times 23?",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("default", type=Path)
    parser.add_argument("plugin", type=Path)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    reference, rewritten = Engine.load(args.default), Engine.load(args.default)
    rewritten.target = rows_session(args.plugin, "target")
    rewritten.drafter.session = rows_session(args.plugin, "drafter")

    prompt = reference.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}])
    n = len(prompt)
    feeds = {"input_ids": np.array([prompt]), "position_ids": np.arange(n)[None], "logit_index": np.arange(n)}
    want = reference.target.run(feeds, 0, np.tri(n, dtype=bool))["logits"]
    got = rows_session(args.plugin, "target").run(feeds, 0, np.tri(n, dtype=bool))["logits"]
    same = bool((want.argmax(-1) == got.argmax(-1)).all())
    print(
        f"prefill: max |logit difference| {np.abs(want - got).max():.2e} (max |logit| "
        f"{np.abs(want).max():.1f}), same argmax: {same}"
    )

    for text in PROMPTS:
        prompt = reference.tokenizer.apply_chat_template([{"role": "user", "content": text}])
        plain_config = GenerationConfig(max_new_tokens=args.new_tokens, speculative=False)
        plain = [t for c in reference.generate(prompt, plain_config, GenerationStats()) for t in c]
        stats = GenerationStats()
        config = GenerationConfig(max_new_tokens=args.new_tokens)
        spec = [t for c in rewritten.generate(prompt, config, stats) for t in c]
        print(
            f"{text!r}: EAGLE-3 = plain: {spec == plain} ({len(spec)} tokens, "
            f"{len(spec) / stats.target_passes:.2f} per target pass)"
        )


if __name__ == "__main__":
    main()
