"""Acceptance against regenerated training answers (a first-turn conversation is one answer, a merged
two-turn one two), from the drafter_acceptance.py results of successive drafters, with a least-squares fit
of acceptance = a + b * log2(answers) extrapolated to a target:
    python experiments/plot_acceptance_scaling.py 1446=docs/bench/acceptance-2026-11-27.json \
        3670=docs/bench/acceptance-run3-2026-11-27.json ... --out docs/bench/acceptance-scaling.png
Prints the fit and the answers it predicts for the target, so the figure's claim can be checked.
"""

from __future__ import annotations

import argparse
import json
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="+", help="ANSWERS=RESULTS.json, one per drafter")
    parser.add_argument("--set", default="mt-bench", help="prompt set to plot")
    parser.add_argument("--shape", default="8/5/24", help="tree top_k/depth/total_tokens (default tree)")
    parser.add_argument("--target", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    answers, tau = [], []
    for point in args.points:
        count, path = point.split("=", 1)
        with open(path) as f:
            answers.append(int(count))
            tau.append(json.load(f)[args.set][args.shape])
    x = np.log2(answers)
    slope, intercept = np.polyfit(x, tau, 1)
    needed = 2 ** ((args.target - intercept) / slope)
    print(f"{args.set}, tree {args.shape}: acceptance = {intercept:.3f} + {slope:.3f} * log2(answers)")
    times = needed / answers[-1]
    print(f"{args.target} is reached at ~{needed:,.0f} answers ({times:.1f}x the last drafter's)")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(answers, tau, "o", label="measured (shipped drafters, in order)")
    span = np.linspace(x.min(), max(x.max(), math.log2(needed)), 50)
    ax.plot(2**span, intercept + slope * span, "--", label=f"fit: +{slope:.2f} per doubling")
    ax.axhline(args.target, color="grey", lw=0.8)
    ax.annotate(f"target {args.target}", (2 ** span[0], args.target), va="bottom")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("regenerated training answers")
    ax.set_ylabel("tokens per target pass")
    ax.set_title(f"{args.set} acceptance, tree {args.shape}, temperature 0")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
