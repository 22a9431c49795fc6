"""One `eaglex bench` run as tok/s per precision: eaglex's methods next to the peers at the same precision,
over all the run's sets (tokens over seconds, so longer answers weigh more).

    python experiments/plot_peers.py RESULTS.json OUT.png

Methods are grouped by the precision in their names (see GROUPS); methods of no group are left out.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

# precision -> name fragments that place a method there, in order of the bars.
GROUPS = {
    "fp32": ["eaglex plain python", "eaglex plain native", "eaglex EAGLE-3 python", "eaglex EAGLE-3 native",
             "eaglex EAGLE-3 fp32 int8-drafter native", "onnxruntime-genai fp32", "llama.cpp f32"],
    "int4, fp32 activations": ["eaglex plain int4 python", "eaglex plain int4 native",
                               "onnxruntime-genai int4 fp32-act"],
    "int4, int8 activations": ["eaglex plain int4 a8 python", "eaglex plain int4 a8 native",
                               "onnxruntime-genai int4", "llama.cpp q4_1"],
}  # fmt: skip


def label(method: str) -> str:
    short = method.replace("onnxruntime-genai", "genai").replace("fp32 int8-drafter", "int8 drafter")
    return textwrap.fill(short, 11)


def overall(results: dict, method: str) -> float:
    tokens = sum(per_set[method]["tokens"] for per_set in results.values())
    seconds = sum(per_set[method]["seconds"] for per_set in results.values())
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(args.results.read_text())["results"]
    present = set(next(iter(results.values())))
    widths = [len([n for n in names if n in present]) for names in GROUPS.values()]
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(16, 5), sharey=True, width_ratios=widths)
    for ax, (precision, names) in zip(axes, GROUPS.items(), strict=True):
        names = [n for n in names if n in present]
        rates = [overall(results, n) for n in names]
        colors = ["tab:blue" if n.startswith("eaglex") else "tab:gray" for n in names]
        bars = ax.bar(range(len(names)), rates, color=colors)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(names)), [label(n) for n in names], fontsize=7)
        ax.set_title(precision)
    axes[0].set_ylabel("decode tok/s, all sets")
    fig.suptitle("eaglex (blue) and peers (gray) on the same weights, one interleaved run")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
