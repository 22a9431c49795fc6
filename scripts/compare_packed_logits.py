"""Are a sequence's logits in a packed pass (runtime/batch.py) bit-identical to its batch-1 pass alone?

For each prompt: prefill it alone at slot 0 and verify a chain of its next greedy tokens; then prefill it in
a region at another offset next to other sequences and verify the same chain packed with their rows.
Prints per prompt whether the logits are identical and the largest difference, and whether the argmax rows
agree (what greedy losslessness needs).

    python scripts/compare_packed_logits.py /work/artifacts/smollm2
"""

from __future__ import annotations

import argparse

import numpy as np

from eaglex.runtime.batch import Sequence, pack, prefill_segment, verify_segment
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig
from eaglex.runtime.tree import chain_tree

PROMPTS = [
    "Write a short poem about the ocean.",
    "What is the difference between a list and a tuple in Python?",
    "Hi",
    "Explain recursion to a child, with an example in Python and one from everyday life.",
]


def run(target, segments, top):
    packed = pack(segments, top)
    feeds = {
        "input_ids": packed.tokens[None],
        "position_ids": packed.positions[None],
        "logit_index": np.arange(len(packed.tokens)),
    }
    return target.run(feeds, top, packed.mask)["logits"][0], packed.offsets


def prefill(target, seq, top):
    logits, _ = run(target, [prefill_segment(seq, len(seq.prompt))], top)
    n = len(seq.prompt)
    target.move(top + np.arange(n), seq.start + np.arange(n))
    seq.committed = n
    return int(logits[-1].argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--rows", type=int, default=8, help="chain rows verified per sequence")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads)
    target, config = engine.target, GenerationConfig()
    prompts = [engine.encode(text, chat=True) for text in PROMPTS]
    for i, prompt in enumerate(prompts):
        # Alone: region at slot 0, rows written right after it (as Engine.generate does).
        alone = Sequence(prompt, config, 0, 512, 64)
        tokens = [prefill(target, alone, len(prompt))]
        # The chain: the target's own greedy continuation, so every row is on the accepted path.
        for _ in range(args.rows - 1):
            alone.tree = chain_tree(tokens[-1:])
            logits, _ = run(target, [verify_segment(alone)], alone.start + alone.committed)
            tokens.append(int(logits[0].argmax()))
            target.move(np.array([alone.committed]), np.array([alone.committed]))
            alone.committed += 1
        alone.committed = len(prompt)
        alone.tree = chain_tree(tokens)
        reference, _ = run(target, [verify_segment(alone)], len(prompt))
        # Packed: the others' regions first, this one at an odd offset, all trees in one pass.
        seqs, start = [], 0
        for other in prompts:
            seq = Sequence(other, config, start, len(other) + 64, 64)
            start += seq.size + 13
            seqs.append(seq)
        top = start
        for seq in seqs:
            root = prefill(target, seq, top)
            seq.tree = chain_tree(tokens if seq.prompt is prompt else [root] * args.rows)
        logits, offsets = run(target, [verify_segment(s) for s in seqs], top)
        packed = logits[offsets[i] : offsets[i] + args.rows]
        same = np.array_equal(packed, reference)
        print(
            f"prompt {i} ({len(prompt)} tokens): logits identical {same}, "
            f"max |diff| {np.abs(packed - reference).max():.3g}, "
            f"argmax equal {np.array_equal(packed.argmax(-1), reference.argmax(-1))}"
        )


if __name__ == "__main__":
    main()
