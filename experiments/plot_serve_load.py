"""Several load-test runs (experiments/load_test_serve.py results.json) on one figure: aggregate tokens/s and
p50/p95 time per output token against concurrent clients, one line per server.

    python experiments/plot_serve_load.py "eaglex fp32=DIR_A" "llama.cpp f32=DIR_B" --out PNG
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=DIR, DIR holding a results.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in args.runs:
        label, folder = run.split("=", 1)
        rows = json.loads((Path(folder) / "results.json").read_text())
        clients = [r["clients"] for r in rows]
        (line,) = left.plot(clients, [r["tokens_per_second"] for r in rows], "o-", label=label)
        right.plot(
            clients, [1000 * r["tpot_p50"] for r in rows], "o-", color=line.get_color(), label=f"{label} p50"
        )
        right.plot(
            clients, [1000 * r["tpot_p95"] for r in rows], "s--", color=line.get_color(), label=f"{label} p95"
        )
    left.set(
        xscale="log", xlabel="concurrent streaming clients", ylabel="aggregate tokens/s", title="throughput"
    )
    right.set(xscale="log", yscale="log", xlabel="concurrent streaming clients", ylabel="ms per output token")
    right.set_title("time per output token after the first")
    for axis in (left, right):
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
