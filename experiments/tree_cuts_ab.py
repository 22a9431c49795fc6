"""Draft trees with and without probability cuts, decoded in one process, interleaved prompt by prompt
(the order rotates each prompt): tok/s, tokens per pass and drafter calls per pass, and every output
checked against the first tree's.

    python experiments/tree_cuts_ab.py ARTIFACT [--runtime native] [--set mt-bench] [--prompts 20]
        [--tree 2,2,4,0,0 --tree 2,7,8,0.05,0.3 ...]   # top_k,depth,total_tokens,path p,grow p

Each tree gets prompt lookup of `--ngram` tokens (default 8, as the tuned default uses).
"""

from __future__ import annotations

import harness

from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

TREES = ("2,2,4,0,0", "2,7,8,0.05,0.3", "2,5,6,0.05,0.3")
FIELDS = ("top_k", "depth", "total_tokens", "min_path_probability", "min_grow_probability")


def settings(tree: str) -> dict[str, float]:
    values = tree.split(",")
    kinds = (int, int, int, float, float)
    return {name: kind(v) for name, kind, v in zip(FIELDS, kinds, values, strict=True)}


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--runtime", default="native", choices=("python", "native"))
    parser.add_argument("--set", default="mt-bench")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--ngram", type=int, default=8)
    parser.add_argument("--tree", action="append", help="top_k,depth,total_tokens,path p,grow p")
    args = parser.parse_args()
    engine = Engine.load(args.artifact, threads=args.threads, checksums=False, runtime=args.runtime)
    prompts = [engine.encode(p.text, chat=True) for p in load_prompts(args.set, limit=args.prompts)]
    configs = {
        tree: engine.default_config(max_new_tokens=128, ngram=args.ngram, **settings(tree))  # type: ignore[arg-type]
        for tree in args.tree or TREES
    }
    list(engine.generate(prompts[0], engine.default_config(max_new_tokens=8)))  # warm-up
    totals = {tree: [0, 0.0, 0, 0] for tree in configs}  # tokens, seconds, passes, drafter calls
    for i, prompt in enumerate(prompts):
        outputs = []
        for tree in harness.rotations(list(configs), i + 1)[i]:
            stats = GenerationStats()
            outputs.append([t for chunk in engine.generate(prompt, configs[tree], stats) for t in chunk])
            total = totals[tree]
            total[0] += stats.new_tokens - 1  # the prefill's token is not decoded
            total[1] += stats.decode_seconds
            total[2] += stats.target_passes
            total[3] += stats.drafter_calls
        assert all(out == outputs[0] for out in outputs), f"prompt {i}: the trees' outputs differ"
    print(f"{args.artifact.name}, {args.set} x{len(prompts)}, {args.runtime} loop, lookup {args.ngram}")
    print("| tree (top_k,depth,total,path p,grow p) | tok/s | tokens per pass | drafter calls per pass |")
    print("|---|---|---|---|")
    for tree, (tokens, seconds, passes, calls) in totals.items():
        print(f"| {tree} | {tokens / seconds:.1f} | {tokens / passes:.2f} | {calls / passes:.2f} |")


if __name__ == "__main__":
    main()
