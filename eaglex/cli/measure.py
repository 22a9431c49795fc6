"""`eaglex bench`, `eaglex tune` and `eaglex eval`: speed, tree size and agreement of an artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from eaglex.cli.common import progress, user_errors
from eaglex.errors import EaglexError
from eaglex.runtime.settings import RUNTIMES

if TYPE_CHECKING:
    from eaglex.runtime.manifest import Manifest

POSITIVE = click.IntRange(min=1)


def batch_sizes(_ctx, _param, value: str) -> tuple[int, ...]:
    """--batch-sizes: increasing positive integers separated by commas, or 'none'."""
    if value.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(part) for part in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or list(sizes) != sorted(set(sizes)):
        raise click.BadParameter(f"{value!r} is not increasing positive integers like 1,2,4,8 (or none)")
    return sizes


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--sets",
    default="mt-bench,humaneval,gsm8k,xsum",
    show_default=True,
    help="Comma-separated benchmark sets (first turns of MT-bench; HumanEval; GSM8K; XSum).",
)
@click.option(
    "--limit",
    default=20,
    type=POSITIVE,
    show_default=True,
    help="Prompts per set (MT-bench has 80).",
)
@click.option("--max-new-tokens", default=128, type=POSITIVE, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="eaglex methods only; peers are greedy.")
@click.option("--threads", default=2, show_default=True)
@click.option(
    "--runtime",
    default="auto",
    show_default=True,
    help="Whose loop decodes eaglex's methods: python, native (libeaglex, built on first use) or auto "
    "(native where it is built); several, comma-separated, run side by side (e.g. python,native).",
)
@click.option(
    "--ngram",
    default=0,
    type=click.IntRange(min=0),
    show_default=True,
    help="Also run eaglex EAGLE-3 with prompt lookup of up to this many tokens (eaglex run --ngram).",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run every method in this process instead of one process each (their thread pools then share "
    "the cores: llama.cpp's threads sleep at barriers so as not to starve the others).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Also run peers on the same weights and prompts (see --peers): transformers generate and its "
    "prompt lookup (extra eaglex[export]), onnxruntime-genai at fp32 and int4 and llama.cpp at f32, f16 and "
    "Q4_1 (extra eaglex[peers]).",
)
@click.option(
    "--peers",
    default="transformers,onnxruntime-genai,llama.cpp",
    show_default=True,
    help="With --compare: which peers to run.",
)
@click.option(
    "--also",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Another artifact of the same model (e.g. int4; repeatable): its plain and EAGLE-3 decoding join "
    "the run, the EAGLE-3 output checked against its own plain output.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for results.json, results.md and results.png [default: bench-results/DATE].",
)
@user_errors
def bench(
    artifact: Path,
    sets: str,
    limit: int,
    max_new_tokens: int,
    temperature: float,
    threads: int,
    runtime: str,
    ngram: int,
    in_process: bool,
    compare: bool,
    peers: str,
    also: tuple[Path, ...],
    out: Path | None,
) -> None:
    """Acceptance length, tokens/s and speedup per benchmark set, methods interleaved prompt by prompt."""
    import json
    from functools import partial

    from eaglex.bench import isolate
    from eaglex.bench.datasets import load_prompts
    from eaglex.bench.methods import eaglex_method, eaglex_method_name
    from eaglex.bench.peers import parse_peers, peer_recipes
    from eaglex.bench.report import markdown_table, plot
    from eaglex.bench.suite import run_suite
    from eaglex.extras import require
    from eaglex.runtime.manifest import load
    from eaglex.runtime.tokenizer import Tokenizer

    # Every optional package this run will use is checked now, not after minutes of decoding.
    require(["bench"], "eaglex bench (its plot)")
    peer_names = parse_peers(peers) if compare else []
    runtimes = [name.strip() for name in runtime.split(",")]
    if not runtimes or set(runtimes) - set(RUNTIMES) or len(set(runtimes)) < len(runtimes):
        raise EaglexError(f"--runtime {runtime!r}: name each of {', '.join(RUNTIMES)} at most once")

    # The files are checked here; each method loads its graphs where it runs, this process only tokenizes.
    manifests = [load(path) for path in (artifact, *also)]
    for path, manifest in zip((artifact, *also), manifests, strict=True):
        if manifest.drafter is None:
            raise EaglexError(f"{path} has no drafter: export it with --drafter to benchmark EAGLE-3")
    prompts = {name: load_prompts(name, limit) for name in sets.split(",")}

    # Method names: "eaglex plain", "eaglex EAGLE-3 int4 native", ...; an --also artifact's methods must
    # reproduce its own plain decoding (its weights differ), the first artifact's the run's first method.
    def suffix(label: str, name: str) -> str:
        return f"{label} {name}".strip() if len(runtimes) > 1 else label

    recipes, names = [], []
    for i, (path, manifest) in enumerate(zip((artifact, *also), manifests, strict=True)):
        label = artifact_label(manifest, path, names) if i else ""
        reference = eaglex_method_name(False, suffix(label, runtimes[0])) if label else None
        modes = ((False, 0), (True, 0), (True, ngram)) if ngram else ((False, 0), (True, 0))
        for name in runtimes:
            for speculative, lookup in modes:  # (speculative, prompt lookup tokens)
                shown = suffix(label, name)
                method = (path, threads, name, speculative, temperature, shown, reference, lookup)
                recipes.append(partial(eaglex_method, *method))
                names.append(eaglex_method_name(speculative, shown, lookup))
    if compare:
        recipes += peer_recipes(manifests[0], threads, peer_names, progress)
    progress(f"loading {len(recipes)} methods" + ("" if in_process else ", one process each"))
    methods = [recipe() for recipe in recipes] if in_process else isolate.start(recipes)
    try:
        for method in methods:
            progress(f"{method.name}: {method.setup}")
        results = run_suite(Tokenizer(manifests[0].root).prompt, methods, prompts, max_new_tokens)
    finally:
        for method in methods:
            if isinstance(method, isolate.Isolated):
                method.close()
    out = out or Path("bench-results") / time.strftime("%Y-%m-%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "artifact": str(artifact),
        "also": [str(path) for path in also],
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "threads": threads,
        "methods": {m.name: m.setup for m in methods},
        "results": results,
    }
    tuned = artifact / "tune.json"
    sweep = json.loads(tuned.read_text())["sweep"] if tuned.exists() else None
    (out / "results.json").write_text(json.dumps(record, indent=1))
    (out / "results.md").write_text(markdown_table(results) + "\n")
    plot(results, out / "results.png", sweep)
    click.echo(markdown_table(results))
    progress(f"wrote {out}/results.json, results.md, results.png")


def artifact_label(manifest: Manifest, path: Path, taken: list[str]) -> str:
    """A short name for an extra artifact in the results: its weights' precision ("int4", "int4 a8", and the
    drafter's where it differs: "fp32 int4-drafter"), or its folder's name when that is already used."""
    quant = manifest.target.quantization
    label = "fp32" if quant is None else quant.weights + (" a8" if quant.activations == "int8" else "")
    drafter = manifest.drafter.quantization if manifest.drafter else None
    weights = [q.weights if q else "fp32" for q in (quant, drafter)]
    if manifest.drafter and weights[0] != weights[1]:
        label += f" {weights[1]}-drafter"
    from eaglex.bench.methods import eaglex_method_name

    return path.name if eaglex_method_name(False, label) in taken else label


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--threads", default=2, show_default=True)
@click.option(
    "--prompts-per-set",
    default=4,
    type=POSITIVE,
    show_default=True,
    help="Calibration prompts from the end of GSM8K, HumanEval and XSum (never benchmark prompts).",
)
@click.option(
    "--new-tokens",
    default=64,
    type=POSITIVE,
    show_default=True,
    help="Greedy continuation length per prompt.",
)
@click.option(
    "--reps", default=5, type=POSITIVE, show_default=True, help="Timing repetitions per cost measurement."
)
@click.option(
    "--check",
    default=3,
    type=POSITIVE,
    show_default=True,
    help="Best predicted shapes to confirm by decoding.",
)
@click.option(
    "--batch-sizes",
    default="1,2,4,8",
    callback=batch_sizes,
    show_default=True,
    help="Batch sizes of eaglex serve to pick a tree for (predicted from timed packed passes; 'none': skip).",
)
@click.option(
    "--rows-per-pass",
    default=64,
    type=POSITIVE,
    show_default=True,
    help="Rows per packed pass, as eaglex serve's option: trees per batch size stay within it.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="Whose loop decodes the checks: as eaglex run's option (auto: libeaglex's where it is built).",
)
@user_errors
def tune(
    artifact: Path,
    threads: int,
    prompts_per_set: int,
    new_tokens: int,
    reps: int,
    check: int,
    batch_sizes: tuple[int, ...],
    rows_per_pass: int,
    runtime: str,
) -> None:
    """Pick the draft tree (top_k, depth, total_tokens) that decodes fastest on this machine; store it in
    the artifact's manifest so run and bench use it by default, with the tree eaglex serve uses per batch
    size."""
    from eaglex.bench.tune import LOOKUP, write_tree
    from eaglex.bench.tune import tune as tune_tree

    result = tune_tree(
        artifact,
        threads,
        prompts_per_set,
        new_tokens,
        reps,
        check,
        progress,
        batch_sizes,
        rows_per_pass,
        runtime,
    )
    write_tree(artifact, result)
    print_by_batch(result["by_batch"]["choices"])
    for row in result["measured"]:
        ms = {k: 1000 * v for k, v in row["round_seconds"].items()}
        parts = ", ".join(
            f"{part} {ms[f'predicted_{part}_seconds']:.1f}/{ms[f'measured_{part}_seconds']:.1f}"
            for part in ("verify", "draft", "other")
        )
        cuts = (
            f", cut below path p {row['min_path_probability']:g} and grow p {row['min_grow_probability']:g}"
            if row["min_path_probability"] or row["min_grow_probability"]
            else ""
        )
        click.echo(
            f"top_k {row['top_k']:2d} depth {row['depth']} total_tokens {row['total_tokens']:3d}{cuts}: "
            f"predicted {row['predicted_tokens_per_second']:.1f} tok/s, measured "
            f"{row['measured_tokens_per_second']:.1f} tok/s{with_lookup(row['lookup_tokens_per_second'])}; "
            f"ms per round (predicted/measured): {parts}"
        )
    click.echo(f"decoding checks on the {result['decoded_on']} loop")
    click.echo(
        f"plain decoding: {result['plain_tokens_per_second']:.1f} tok/s"
        f"{with_lookup(result['plain_lookup_tokens_per_second'])}; best tree: {result['best']}"
    )
    lookup = f" with prompt lookup of {LOOKUP} tokens" if result["ngram"] else ""
    if result["speculative"]:
        click.echo(f"default: speculative decoding with the best tree{lookup}")
    elif lookup:
        click.echo(f"default: plain decoding{lookup}, faster than every draft tree on this machine")
    elif not result["lossless_speculation"]:
        click.echo(
            "default: plain decoding: with int8 activations speculative output differs from plain decoding "
            "(export with --activations fp32 to keep it lossless); eaglex run --spec still decodes with "
            "the best tree"
        )
    else:
        click.echo(
            "default: plain decoding, which is faster than every draft tree on this machine with this "
            "drafter; eaglex run --spec still decodes with the best tree"
        )


def with_lookup(rate: float | None) -> str:
    """A tune rate with prompt lookup, as a parenthesis; nothing where it was not measured (lossy)."""
    return "" if rate is None else f" ({rate:.1f} with prompt lookup)"


def print_by_batch(choices: list[dict]) -> None:
    """The serving trees per batch size: a small table of predicted aggregate tokens/s."""
    if not choices:
        return
    click.echo("eaglex serve, predicted tok/s of all sequences together:")
    click.echo("| batch | top_k/depth/total_tokens | tok/s | plain tok/s |\n|---|---|---|---|")
    for c in choices:
        tree = f"{c['top_k']}/{c['depth']}/{c['total_tokens']}" if c["speculative"] else "plain"
        rates = f"{c['tokens_per_second']:.1f} | {c['plain_tokens_per_second']:.1f}"
        click.echo(f"| {c['batch']} | {tree} | {rates} |")


@click.command("eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    required=True,
    type=click.Path(path_type=Path),
    help="The float32 artifact of the same model (exported without --quantize).",
)
@click.option(
    "--prompts",
    "prompt_file",
    default=None,
    type=click.Path(path_type=Path),
    help="JSON list of prompt strings (chat) or {text, chat} records [default: MT-bench first turns].",
)
@click.option("--limit", default=20, type=POSITIVE, show_default=True, help="How many prompts.")
@click.option(
    "--new-tokens",
    default=64,
    type=POSITIVE,
    show_default=True,
    help="Reference greedy continuation length.",
)
@click.option("--threads", default=2, show_default=True)
@user_errors
def evaluate(
    artifact: Path, reference: Path, prompt_file: Path | None, limit: int, new_tokens: int, threads: int
) -> None:
    """Agreement of a (quantized) artifact with its float32 reference: greedy token match rate and mean
    KL(reference || artifact), teacher-forced on the reference's greedy continuations."""
    from eaglex.bench.agreement import artifact_scorer, default_prompts, load_prompt_file, measure_agreement
    from eaglex.runtime.engine import Engine

    prompts = load_prompt_file(prompt_file)[:limit] if prompt_file else default_prompts(limit, progress)
    candidate, ref = Engine.load(artifact, threads=threads), Engine.load(reference, threads=threads)
    quantization = candidate.manifest.target.quantization
    scheme = quantization.weights if quantization else "float32"
    result = measure_agreement({scheme: artifact_scorer(candidate)}, ref, prompts, new_tokens)[scheme]
    click.echo(f"{scheme} vs float32: {result.line()}")
