"""Where a decoding round's time goes: rows verified per target pass (drafted and looked up), ms per round
spent verifying, drafting and between the calls, and tokens per pass, for plain decoding and the artifact's
tuned default, interleaved prompt by prompt on one set (Python loop: it times the parts separately).

    python experiments/round_profile.py ARTIFACT [--set mt-bench] [--prompts 10] [--new-tokens 128]

The verify ms of plain decoding is the one-row pass a round is measured against: a round pays when its
tokens per pass exceed its ms over that.
"""

from __future__ import annotations

from collections import defaultdict

import harness

import eaglex.runtime.generate as loop
from eaglex.bench.datasets import load_prompts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

MODES = {"plain": {"speculative": False}, "tuned default": {}}
COUNTED = ("target_passes", "verified_tokens", "verify_seconds", "draft_seconds", "decode_seconds")


def count_rows(rows: list[int]) -> None:
    """Records the rows of every target pass the loop runs (the prefill's too; decode passes are counted
    from the stats, so the prefill row counts are dropped by the caller)."""
    run = loop.run_target

    def counted(target, tokens, *args):
        rows.append(len(tokens))
        return run(target, tokens, *args)

    loop.run_target = counted


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--set", default="mt-bench")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    rows: list[int] = []
    count_rows(rows)
    engine = Engine.load(args.artifact, threads=args.threads, checksums=False, runtime="python")
    prompts = [engine.encode(p.text, chat=True) for p in load_prompts(args.set, limit=args.prompts)]
    totals: dict[str, dict[str, float]] = {mode: defaultdict(float) for mode in MODES}
    list(engine.generate(prompts[0], engine.default_config(max_new_tokens=8)))  # warm-up
    for prompt in prompts:
        for mode, overrides in MODES.items():
            stats, start = GenerationStats(), len(rows)
            config = engine.default_config(max_new_tokens=args.new_tokens, **overrides)
            for _ in engine.generate(prompt, config, stats):
                pass
            total = totals[mode]
            total["rows"] += sum(rows[start + 1 :])  # the first pass is the prefill
            for name in COUNTED:
                total[name] += getattr(stats, name)
    config = engine.default_config()
    print(
        f"{args.artifact.name}, {args.set} x{args.prompts}, tuned default: tree "
        f"({config.top_k},{config.depth},{config.total_tokens}), prompt lookup {config.ngram}, "
        f"speculative {config.speculative}"
    )
    print("| mode | rows per pass | tokens per pass | verify ms | draft ms | other ms | round ms | tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, t in totals.items():
        passes = t["target_passes"]
        verify, draft, round_ms = (1000 * t[k] / passes for k in COUNTED[2:])
        print(
            f"| {mode} | {t['rows'] / passes:.2f} | {t['verified_tokens'] / passes:.2f} | {verify:.2f} | "
            f"{draft:.2f} | {round_ms - verify - draft:.2f} | {round_ms:.2f} | "
            f"{t['verified_tokens'] / t['decode_seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
