"""Benchmark results as a markdown table and a plot (the JSON is the results dict itself)."""

from __future__ import annotations

from pathlib import Path

SPEC, PLAIN = "eaglex EAGLE-3", "eaglex plain"

Results = dict[str, dict[str, dict[str, float]]]  # {set: {method: summary}}


def first(per_method: dict[str, dict[str, float]], prefix: str) -> dict[str, float] | None:
    """The first method named `prefix...`: the main artifact's, on the first runtime of the run."""
    return next((summary for name, summary in per_method.items() if name.startswith(prefix)), None)


def markdown_table(results: Results) -> str:
    methods = list(next(iter(results.values())))
    header = (
        ["set", "prompts", "tau"]
        + [f"{m} tok/s (GB/s)" for m in methods]
        + ["EAGLE-3 / plain", "same output"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_method in results.items():
        spec, plain = first(per_method, SPEC), first(per_method, PLAIN)
        cells = [
            name,
            f"{int(next(iter(per_method.values()))['prompts'])}",
            f"{spec['acceptance_length']:.2f}" if spec else "-",
        ]
        cells += [
            f"{s['tokens_per_second']:.1f} ({s['weight_GB_per_second']:.1f})" for s in per_method.values()
        ]
        speedup = spec["tokens_per_second"] / plain["tokens_per_second"] if spec and plain else None
        cells.append(f"{speedup:.2f}x" if speedup else "-")
        prompts = int(next(iter(per_method.values()))["prompts"])
        cells.append(
            ", ".join(
                f"{m}: {int(s['same_output_as_reference'])}/{prompts}"
                for m, s in list(per_method.items())[1:]
            )
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Results, path: Path, tree_sweep: list[dict[str, float]] | None = None) -> None:
    """Speedup and acceptance length per set, tokens/s of every method per set, and (from `eaglex tune`)
    predicted and measured tokens/s against tree size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, methods = list(results), list(next(iter(results.values())))
    panels = 3 if tree_sweep else 2
    height = 4.2 + (0.16 * len(methods) if len(methods) > 8 else 0)  # room for the legend below
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, height))
    ax = axes[0]
    pairs = [(first(r, SPEC), first(r, PLAIN)) for r in results.values()]
    if all(spec and plain for spec, plain in pairs):
        speedups = [spec["tokens_per_second"] / plain["tokens_per_second"] for spec, plain in pairs]  # type: ignore[index]
        taus = [spec["acceptance_length"] for spec, _ in pairs]  # type: ignore[index]
        ax.bar(sets, speedups, color="tab:blue", label="speedup over eaglex plain")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("speedup (x)")
        twin = ax.twinx()
        twin.plot(sets, taus, "o-", color="tab:orange", label="acceptance length tau")
        twin.set_ylabel("tokens per target pass")
        twin.set_ylim(bottom=0)
        ax.set_title("EAGLE-3 speedup and acceptance")
    ax = axes[1]
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.bar(
            [x + i * width for x in range(len(sets))],
            [results[s][method]["tokens_per_second"] for s in sets],
            width,
            label=method,
        )
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(sets))], sets)
    ax.set_ylabel("decode tokens/s")
    ax.set_title("tokens/s per method")
    if len(methods) <= 8:
        ax.legend(fontsize=7)
    else:  # many methods: below the plot, where it hides no bar
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    if tree_sweep:
        ax = axes[2]
        sizes = [row["total_tokens"] for row in tree_sweep]
        ax.plot(sizes, [row["predicted_tokens_per_second"] for row in tree_sweep], "o-", label="predicted")
        measured = [
            (row["total_tokens"], row["measured_tokens_per_second"])
            for row in tree_sweep
            if row.get("measured_tokens_per_second")
        ]
        if measured:
            ax.plot(*zip(*measured, strict=False), "s", label="measured")
        ax.set_xlabel("tree size (nodes verified per pass)")
        ax.set_ylabel("tokens/s")
        ax.set_title("tokens/s vs tree size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
