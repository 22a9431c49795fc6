"""Size the draft tree for this machine: measured costs combined with measured acceptance.

A round costs one verify pass over T nodes plus `depth` drafter calls of `top_k` rows, and yields the
accepted drafts plus a bonus token. On a GPU a 60-node verify costs about what one token does; on a CPU
it costs several times more, so the best tree is much smaller. `tune` measures
  - the target's time per verify pass for each tree size T, and the drafter's time per call of k rows;
  - for every tree shape (top_k, depth, T), with or without probability cuts, how many drafts would be
    accepted, how many nodes verified and levels grown, walking reference continuations round by round
    (bench/tree_walk.py): from one pool grown per position, since the tree for any smaller shape or cut is
    a sub-tree of it (runtime/tree.py `build`), and a tree accepts the longest prefix of the target's
    greedy continuation that it contains;
and picks the shape with the most predicted tokens per second, then checks the best few by decoding, each
with and without prompt lookup (as plain decoding is), and makes the fastest of them the default. The checks
decode on the loop `eaglex run` uses (libeaglex's where it is built: `runtime` "auto"); costs and
acceptance come from the Python runtime's sessions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaglex.bench.datasets import Prompt, load_prompts
from eaglex.bench.round_costs import draft_cost, mean_context, verify_cost
from eaglex.bench.tree_walk import Pools, shape_keys, verify_and_grow_seconds, walk_means
from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract
from eaglex.runtime.accept import accepted_drafts
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats, run_target
from eaglex.runtime.tree import DraftTreeBuilder

TOP_KS = (1, 2, 4, 8)
MAX_DEPTH = 8
SIZES = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LOOKUP = 8  # prompt lookup's tokens per tree, checked with each default candidate (docs/BENCHMARKS.md)


def calibration_prompts(per_set: int) -> list[Prompt]:
    """The last prompts of sets whose first prompts `eaglex bench` uses: tuning never sees bench prompts."""
    prompts = []
    for name in ("gsm8k", "humaneval", "xsum"):
        prompts += load_prompts(name)[-per_set:]
    return prompts


@dataclass(frozen=True)
class GreedyTrace:
    """A prompt's greedy continuation and the target's features along it: all that scoring a drafter needs."""

    sequence: np.ndarray  # int64 [n]: the prompt's ids, then the continuation
    prompt_len: int
    features: np.ndarray  # [n - 1, 3 * hidden]: row i is the target's at position i, paired with token i + 1


def greedy_trace(engine: Engine, prompt: Prompt, new_tokens: int, cache: Path | None = None) -> GreedyTrace:
    """Decodes `prompt` greedily, then one pass over the whole sequence gives the features the drafter pairs
    with each next token. With `cache` (a folder) the trace is kept there and reused by any artifact with the
    same target graph (its files' sha256 in the manifest): scoring a new drafter then skips the target."""
    ids = engine.encode(prompt.text, prompt.chat)
    path = None
    if cache is not None and (key := _trace_key(engine, ids, new_tokens)) is not None:
        path = cache / f"{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as stored:
            return GreedyTrace(stored["sequence"], len(ids), stored["features"])
    config = engine.default_config(max_new_tokens=new_tokens, speculative=False)
    sequence = np.array(ids + [t for chunk in engine.generate(ids, config) for t in chunk], np.int64)
    n = len(sequence) - 1
    out = run_target(engine.target, sequence[:n], np.arange(n), 0, np.tri(n, dtype=bool), np.array([n - 1]))
    features = out["features"][0]
    trace = GreedyTrace(sequence, len(ids), features)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial.npz")  # processes may share a cache folder
        np.savez(partial, sequence=trace.sequence, features=trace.features)
        partial.replace(path)
    return trace


def _trace_key(engine: Engine, ids: list[int], new_tokens: int) -> str | None:
    """What a trace depends on: the target graph's files, the prompt's ids and the number of new tokens
    (None where the manifest lists no checksums for the target's files: nothing to key a cache by)."""
    target_file = engine.manifest.target.file
    files = {name: f.sha256 for name, f in engine.manifest.files.items() if name.startswith(target_file)}
    if not files:
        return None
    key = json.dumps({"target": files, "ids": ids, "new_tokens": new_tokens}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def acceptance(
    engine: Engine,
    prompts: list[Prompt],
    top_ks: tuple[int, ...],
    sizes: tuple[int, ...],
    new_tokens: int,
    progress,
    max_depth: int = MAX_DEPTH,
    on_reference: Callable[[list[int]], None] | None = None,
    traces: Path | None = None,
    on_pool: Callable[[int, DraftTreeBuilder, np.ndarray, int], None] | None = None,
) -> dict[tuple[int, int, int], float]:
    """Mean accepted drafts per round for every (top_k, depth <= max_depth, total_tokens), over every
    position of the prompts' greedy continuations (each handed to `on_reference` too, if given; `traces`:
    the folder that caches them, see greedy_trace). `on_pool(top_k, pool, sequence, position)` sees each
    position's pool too (tune keeps them to walk: bench/tree_walk.py)."""
    drafter = engine.drafter
    assert drafter is not None
    sums: dict[tuple[int, int, int], int] = {}
    rounds = 0
    for i, prompt in enumerate(prompts):
        trace = greedy_trace(engine, prompt, new_tokens, traces)
        sequence, start, features = trace.sequence, trace.prompt_len, trace.features
        if on_reference is not None:
            on_reference(sequence[start:].tolist())
        for k in top_ks:
            drafter.reset()
            drafter.extend(sequence[1 : start + 1], features[:start], k)
            for position in range(start, len(sequence) - 1):  # root: sequence[position], already emitted
                builder = drafter.grow(int(sequence[position]), k, max_depth)
                continuation = sequence[position + 1 :]
                if on_pool is not None:
                    on_pool(k, builder, sequence, position)
                for depth, size in itertools.product(range(1, max_depth + 1), sizes):
                    tree = builder.build(size, max_depth=depth)
                    key = (k, depth, size)
                    sums[key] = sums.get(key, 0) + accepted_drafts(tree, continuation)
                drafter.extend(sequence[position + 1 : position + 2], features[position : position + 1], k)
                rounds += k == top_ks[0]
        progress(f"calibration prompt {i + 1}/{len(prompts)}")
    return {key: total / rounds for key, total in sums.items()}


@dataclass(frozen=True)
class Shape:
    top_k: int
    depth: int
    total_tokens: int
    predicted_tokens_per_second: float
    min_path_probability: float = 0.0  # the cuts (bench/tree_walk.py); 0: a fixed shape
    min_grow_probability: float = 0.0

    @property
    def tree(self) -> dict[str, int | float]:
        fields = ("top_k", "depth", "total_tokens", "min_path_probability", "min_grow_probability")
        return {name: getattr(self, name) for name in fields}


def predict(
    walked: dict[tuple, np.ndarray],
    verify: dict[int, float],
    draft: dict[tuple[int, int], float],
    commit: dict[int, float],
    host: float,
) -> list[Shape]:
    """Predicted tokens/s of every shape walked (bench/tree_walk.py): (drafts accepted + bonus) per round,
    over the round's cost: verify pass and tree growth at the walk's mean nodes and levels, one drafter call
    to commit the accepted rows, and the loop's own work."""
    shapes = []
    for (k, d, t, path, grow), (drafts, nodes, levels) in walked.items():
        if t <= 1 + k + (d - 1) * k * k:  # a larger tree than the pool holds is the same tree
            seconds = sum(verify_and_grow_seconds(nodes, levels, k, verify, draft)) + commit[k] + host
            shapes.append(Shape(k, d, t, (drafts + 1) / seconds, path, grow))
    return sorted(shapes, key=lambda s: -s.predicted_tokens_per_second)


@dataclass(frozen=True)
class Decoded:
    """What decoding the calibration prompts with one tree shape measured."""

    tokens_per_second: float
    seconds_per_round: float
    draft_seconds_per_round: float  # growing the tree and committing the accepted rows
    verify_seconds_per_round: float  # the target pass over the tree


def decode(
    engine: Engine, prompts: list[Prompt], shape: Shape | None, new_tokens: int, ngram: int = 0
) -> Decoded:
    """Decodes the prompts with this tree shape (None: plain decoding) and prompt lookup of up to `ngram`
    tokens (0: none, whatever the manifest says now), and times its parts."""
    tokens, seconds, rounds, draft, verify = 0, 0.0, 0, 0.0, 0.0
    for prompt in prompts:
        stats = GenerationStats()
        tree = shape.tree if shape else {}
        config = engine.default_config(
            max_new_tokens=new_tokens, speculative=bool(shape), ngram=ngram, **tree
        )
        for _ in engine.generate(engine.encode(prompt.text, prompt.chat), config, stats):
            pass
        tokens, seconds = tokens + stats.verified_tokens, seconds + stats.decode_seconds
        rounds += stats.target_passes
        draft, verify = draft + stats.draft_seconds, verify + stats.verify_seconds
    return Decoded(tokens / seconds, seconds / rounds, draft / rounds, verify / rounds)


def round_parts(
    shape: Shape, decoded: Decoded, verify: dict, draft: dict, commit: dict, host: float, walked: dict
) -> dict[str, float]:
    """A checked shape's round, measured against the model's parts: where a prediction misses. Predicted at
    the walk's mean nodes and levels (`walked`: tree_walk.walk_means)."""
    _, nodes, levels = walked[(*shape.tree.values(),)]
    verify_seconds, grow_seconds = verify_and_grow_seconds(nodes, levels, shape.top_k, verify, draft)
    measured_other = decoded.seconds_per_round - decoded.verify_seconds_per_round
    return {
        "predicted_verify_seconds": verify_seconds,
        "measured_verify_seconds": decoded.verify_seconds_per_round,
        "predicted_draft_seconds": grow_seconds + commit[shape.top_k],
        "measured_draft_seconds": decoded.draft_seconds_per_round,
        "predicted_other_seconds": host,
        "measured_other_seconds": measured_other - decoded.draft_seconds_per_round,
    }


def choose_default(
    plain: float, measured: dict[Shape, float], lookup: dict[Shape | None, float], lossless: bool
) -> tuple[Shape | None, int]:
    """The fastest default measured: plain decoding (None) or a checked tree, each without prompt lookup or
    with LOOKUP tokens (`lookup`, measured only where lossless); plain alone where speculation is lossy."""
    rates: dict[tuple[Shape | None, int], float] = {(None, 0): plain}
    if lossless:
        rates |= {(s, 0): rate for s, rate in measured.items()}
    rates |= {(s, LOOKUP): rate for s, rate in lookup.items()}
    return max(rates, key=rates.__getitem__)


def sweep(shapes: list[Shape], sizes: tuple[int, ...], measured: dict[Shape, float]) -> list[dict]:
    """The best predicted shape at each tree size (and its measured tok/s where checked), for the plot."""
    best = [next(s for s in shapes if s.total_tokens == size) for size in sizes]
    return [{**top.__dict__, "measured_tokens_per_second": measured.get(top)} for top in best]


def decoding_engine(artifact: Path, threads: int, runtime: str, engine: Engine) -> Engine:
    """The engine whose loop decodes tune's checks: `runtime`'s, or `engine` where that is the Python loop
    (one set of sessions is enough)."""
    if runtime == "python":
        return engine
    checker = Engine.load(artifact, threads=threads, runtime=runtime)
    return engine if checker.runtime == "python" else checker


def tune(
    artifact: Path,
    threads: int,
    per_set: int,
    new_tokens: int,
    reps: int,
    check: int,
    progress,
    batches: tuple[int, ...] = (),
    rows_per_pass: int = 64,
    runtime: str = "auto",
) -> dict:
    """The best tree for one sequence (checked by decoding on `runtime`'s loop) and, per batch size in
    `batches`, for eaglex serve's passes of at most `rows_per_pass` rows (predicted: bench/tune_batch.py)."""
    from eaglex.bench import tune_batch  # here: it times with this module's helper

    engine = Engine.load(artifact, threads=threads)
    checker = decoding_engine(artifact, threads, runtime, engine)
    if engine.drafter is None:
        raise EaglexError(f"{artifact} has no drafter: there is no tree to tune")
    limit = engine.manifest.tree.max_total_tokens
    sizes = tuple(s for s in SIZES if s <= limit)
    top_ks = tuple(k for k in TOP_KS if k <= engine.manifest.drafter.max_top_k)  # type: ignore[union-attr]
    for batch in batches:  # each fits the context, or fails before the long work
        tune_batch.region_tokens(engine, batch, rows_per_pass)
    room = engine.target.capacity - new_tokens - MAX_DEPTH * max(top_ks)  # drafter scratch rows too
    lengths = {p: len(engine.encode(p.text, p.chat)) for p in calibration_prompts(per_set)}
    prompts = [p for p, length in lengths.items() if length <= room]
    if not prompts:
        raise EaglexError(f"no calibration prompt fits the context of {engine.target.capacity} tokens")
    # Room is left for the largest tree the costs are timed for.
    context = mean_context([lengths[p] for p in prompts], new_tokens, engine.target.capacity - max(sizes))
    progress(f"measuring verify and drafter costs with {context} tokens in the cache")
    verify = verify_cost(engine, sizes, reps, context)
    draft, commit = draft_cost(engine, list(range(1, 65)), top_ks, reps, context, MAX_DEPTH)
    pools = Pools()
    accepted = acceptance(engine, prompts, top_ks, sizes, new_tokens, progress, on_pool=pools.add)
    costs = tune_batch.measure(
        engine, batches, sizes, top_ks, MAX_DEPTH, reps, context, rows_per_pass, progress
    )
    quantization = engine.manifest.target.quantization
    lossless = quantization is None or quantization.lossless_speculation
    by_batch = tune_batch.pick(accepted, costs, batches, rows_per_pass)
    if not lossless:  # timed and reported, but the server decodes plain
        by_batch = [dataclasses.replace(choice, speculative=False) for choice in by_batch]
    # The loop's own work per round (masks, acceptance, cache compaction), from plain decoding.
    plain = decode(checker, prompts, None, new_tokens)
    one_node = verify_cost(engine, (1,), reps, context)
    host = max(plain.seconds_per_round - one_node[1], 0.0)
    verify |= one_node  # trees with cuts verify a single node in some rounds
    walked = walk_means(pools, shape_keys(top_ks, sizes, MAX_DEPTH))
    shapes = predict(walked, verify, draft, commit, host)
    progress(f"checking the best {check} shapes by decoding")
    decoded = {s: decode(checker, prompts, s, new_tokens) for s in shapes[:check]}
    measured = {s: d.tokens_per_second for s, d in decoded.items()}
    lookup: dict[Shape | None, float] = {}  # lossy speculation: lookup, verified as a tree, cannot be default
    if lossless:
        progress(f"checking prompt lookup of {LOOKUP} tokens on plain decoding and those shapes")
        for shape in [None, *measured]:
            lookup[shape] = decode(checker, prompts, shape, new_tokens, LOOKUP).tokens_per_second
    default, ngram = choose_default(plain.tokens_per_second, measured, lookup, lossless)
    best = default or max(measured, key=measured.get)  # the tree --spec uses when plain is the default
    parts = {s: round_parts(s, d, verify, draft, commit, host, walked) for s, d in decoded.items()}
    return {
        "best": best.tree,
        "speculative": default is not None,
        "ngram": ngram,
        "plain_lookup_tokens_per_second": lookup.get(None),
        "lossless_speculation": lossless,
        "decoded_on": checker.runtime,
        "plain_tokens_per_second": plain.tokens_per_second,
        "host_seconds_per_round": host,
        "measured": [
            {
                **s.__dict__,
                "measured_tokens_per_second": v,
                "lookup_tokens_per_second": lookup.get(s),
                "round_seconds": parts[s],
            }
            for s, v in measured.items()
        ],
        "verify_seconds": {str(k): v for k, v in verify.items()},
        "grow_seconds": {f"top_k {k} depth {d}": v for (k, d), v in draft.items()},
        "commit_seconds": {f"top_k {k}": v for k, v in commit.items()},
        "calibration": {
            "prompts": [f"{p.set}/{p.id}" for p in prompts],
            "new_tokens": new_tokens,
            "cache_tokens_for_costs": context,
        },
        "sweep": sweep(shapes, sizes, measured),
        "by_batch": tune_batch.to_json(by_batch, costs, rows_per_pass),
    }


def write_tree(artifact: Path, result: dict) -> None:
    """Stores the tuned tree in the manifest (`run` and `bench` use it by default), whether it beats
    plain decoding (where it does not, `run` decodes plain by default), whether prompt lookup speeds the
    default up, the serving trees per batch size, and the details in tune.json; each file is replaced
    atomically."""
    manifest = contract.load(artifact, checksums=False)  # tune has just loaded and checked it
    partial = artifact / "tune.json.partial"
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(artifact / "tune.json")
    fields = ("batch", "speculative", "top_k", "depth", "total_tokens")
    by_batch = tuple(
        contract.BatchTree(**{f: choice[f] for f in fields}) for choice in result["by_batch"]["choices"]
    )
    tree = dataclasses.replace(
        manifest.tree,
        **result["best"],
        speculative=result["speculative"],
        ngram=result.get("ngram", 0),
        by_batch=by_batch,
    )
    contract.save(dataclasses.replace(manifest, tree=tree))
