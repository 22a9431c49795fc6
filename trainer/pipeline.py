"""`eaglex train-drafter` from start to finish: data -> (regenerated answers) -> cached target features ->
draft vocabulary -> training-time-test training -> an official-format drafter.

Everything slow is cached in the work folder and resumed on a rerun with the same settings: self-written
prompts (self_prompts.jsonl), regenerated answers (regenerated.jsonl), target features (features/), the
trainer's checkpoint (checkpoint/).
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eaglex.errors import EaglexError
from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.exporter.drafter import Eagle3Drafter
from eaglex.exporter.target import TargetConfig
from eaglex.exporter.tokens import special_tokens

from .checkpoint import new_drafter_config, write_drafter
from .data import EvalFilter, Message, Sample, load_records, to_messages, tokenize_conversation
from .features import FeatureStore, LiveFeatures, TargetFeatures, extract
from .loop import TrainConfig, Trainer
from .regenerate import regenerate
from .selfprompts import write_requests
from .vocab import DraftVocab, build_draft_vocab, carry_over_head, fixed_draft_vocab


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ("sharegpt",)  # "sharegpt" (from PyPI) or ShareGPT-format files
    samples: int = 2000  # conversations to train on (0: all), after dropping evaluation prompts
    regenerate: int = 0  # how many of them get their first answer rewritten by the target (greedy)
    # More conversations, after those: a request the target writes itself (selfprompts.py), answered
    # like a regenerated first turn.
    self_prompts: int = 0
    max_length: int = 1024  # tokens per training sequence (longer ones are cut)
    max_new_tokens: int = 256  # length limit of a regenerated answer
    # The target's weights while it writes answers. bfloat16 is faster on CPUs with AVX512-BF16 or AMX and
    # may change a near-tie token, so an answer drifts from the fp32 one; features and the teacher stay fp32.
    regenerate_dtype: str = "float32"
    # User turns answered again per regenerated conversation, each with the earlier answers in context; the
    # turns after the first make one more training sequence per conversation (loss on those answers).
    regenerate_turns: int = 1
    # With later turns: one sequence per multi-turn conversation, loss on every answer, instead of its
    # first turn and the whole conversation (loss on answers 2 and up) as two sequences whose first turn's
    # features and training are then paid twice. A folder seeded with first-turn features redoes those.
    merge_turns: bool = False
    # The target's precision while it computes features and the teacher: "bfloat16" runs its matrix
    # products under bf16 autocast. Stored features are kept, whichever precision wrote them.
    features_dtype: str = "float32"
    val_samples: int = 32  # held out (taken first, so regenerated when regenerate > 0) for validation
    seed: int = 0


def select_conversations(
    sources: Sequence[str], count: int, seed: int, exclude: EvalFilter, report: Callable[[str], None]
) -> list[list[Message]]:
    """Usable conversations of all sources in a seeded random order, minus any with an evaluation prompt."""
    conversations = []
    for source in sources:
        records = load_records(source, report)
        usable = [m for m in map(to_messages, records) if m is not None]
        report(f"{source}: {len(records)} records, {len(usable)} usable conversations")
        conversations += usable
    random.Random(seed).shuffle(conversations)
    chosen, dropped = [], 0
    for messages in conversations:
        if count and len(chosen) == count:
            break
        if exclude.contains_eval_prompt(messages):
            dropped += 1
        else:
            chosen.append(messages)
    report(f"using {len(chosen)} conversations ({dropped} dropped for containing an evaluation prompt)")
    return chosen


def _check_settings(work_dir: Path, settings: dict[str, Any]) -> None:
    """A work folder's caches belong to one set of data settings: refuse to mix them."""
    path = work_dir / "settings.json"
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they come back from the file
    if path.is_file():
        # A folder written before a setting existed was made with its default.
        saved = {**json.loads(json.dumps(asdict(DataConfig()))), **json.loads(path.read_text())}
        if saved != settings:
            changed = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
            raise EaglexError(
                f"{work_dir} holds data made with other settings ({', '.join(changed)}): "
                "rerun with the same settings to resume, or pass another --work-dir"
            )
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


class PhaseHours:
    """Wall hours of one phase (data, features, train) over every run in the work folder: what the drafter
    cost. Called as the phase's progress report, it adds the time since its last line to hours.json at
    every line, so a run stopped part way (a session ending) still counts the hours it spent."""

    def __init__(self, work_dir: Path, phase: str, report: Callable[[str], None]) -> None:
        self.path, self.phase, self.report = work_dir / "hours.json", phase, report
        self.since = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.report(message)
        self.save()

    def save(self) -> dict[str, float]:
        now = time.perf_counter()
        hours = json.loads(self.path.read_text()) if self.path.is_file() else {}
        hours[self.phase] = round(hours.get(self.phase, 0.0) + (now - self.since) / 3600, 6)
        self.since = now
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(hours, indent=2) + "\n")
        temporary.replace(self.path)  # a stop mid-write keeps the previous total
        return hours


def _start_from(folder: Path, target_config: TargetConfig, train: TrainConfig) -> Eagle3Drafter:
    """An earlier drafter to continue from (for example a finished run, trained further on more data or a
    new schedule). Its draft vocabulary is kept unless train.rechoose_vocab: its lm_head rows belong to
    those tokens."""
    start = load_drafter(folder, target_config)
    if not train.rechoose_vocab and len(start.d2t) != train.draft_vocab_size:
        raise EaglexError(
            f"--init-from {folder} drafts {len(start.d2t)} tokens, not --draft-vocab-size "
            f"{train.draft_vocab_size}: pass the size it was trained with, or add --rechoose-vocab"
        )
    return start


def _init_drafter(drafter: Eagle3Drafter, vocab: DraftVocab, seed: int) -> None:
    """Linear layers N(0, 0.02) (Hugging Face's Llama default), norms 1.

    Starting lm_head and norm from the target's own rows was tried on SmolLM2: its confident but
    misplaced first predictions (loss 110 against 31) left it behind a random start after 25 steps.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in drafter.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02, generator=generator)
        drafter.d2t.copy_(vocab.d2t)
        drafter.t2d.copy_(vocab.t2d)


def merge_first_turn(first: Sample | None, later: Sample) -> Sample:
    """The whole conversation with the loss on its first answer as well: `later` begins with `first`."""
    assert first is not None and later.ids[: len(first.ids)] == first.ids
    mask = [a or b for a, b in itertools.zip_longest(first.loss_mask, later.loss_mask, fillvalue=False)]
    return Sample(later.ids, mask)


def build_samples(
    model: nn.Module,
    tokenizer: Any,
    conversations: list[list[Message]],
    data: DataConfig,
    work_dir: Path,
    stop_ids: list[int],
    exclude: EvalFilter,
    report: Callable[[str], None],
    regenerate_workers: int = 1,
) -> list[Sample]:
    first: list[Sample | None] = []
    later: list[Sample | None] = []
    if data.regenerate or data.self_prompts:
        writer = model
        if data.regenerate_dtype != "float32":
            writer = copy.deepcopy(model).to(getattr(torch, data.regenerate_dtype))
        answered = conversations[: data.regenerate]
        if data.self_prompts:
            cache = work_dir / "self_prompts.jsonl"
            answered += write_requests(
                writer, tokenizer, data.self_prompts, cache, data.seed, stop_ids, 256, exclude, report
            )
        first, later = regenerate(
            writer,
            tokenizer,
            answered,
            work_dir / "regenerated.jsonl",
            data.max_new_tokens,
            data.max_length - data.max_new_tokens,
            stop_ids,
            batch_size=256,  # with stopped rows leaving the batch, larger batches pay (BENCHMARKS.md)
            report=report,
            turns=data.regenerate_turns,
            workers=regenerate_workers,
        )
    rest = [tokenize_conversation(tokenizer, m, data.max_length) for m in conversations[data.regenerate :]]
    # The later turns of held-out conversations stay out of training.
    held_out = set([i for i, s in enumerate(first) if s is not None][: data.val_samples])
    later = [None if i in held_out else s for i, s in enumerate(later)]
    if data.merge_turns:
        first = [
            s if extra is None else merge_first_turn(s, extra) for s, extra in zip(first, later, strict=True)
        ]
        later = []
    samples = [s for s in first + rest if s is not None]
    # Otherwise later turns go after all first turns, so a data set grown by more turns keeps its cached
    # features.
    samples += [s for s in later if s is not None]
    report(
        f"{len(samples)} training sequences, {sum(len(s.ids) for s in samples)} tokens "
        f"({sum(sum(s.loss_mask) for s in samples)} in assistant turns)"
    )
    return samples


def train_drafter(
    model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    data: DataConfig,
    train: TrainConfig,
    exclude: EvalFilter,
    report: Callable[[str], None] = print,
    extract_batch_tokens: int = 4096,
    out_dtype: torch.dtype = torch.float16,
    device: str = "cpu",
    regenerate_workers: int = 1,
    live_features: bool = False,
) -> Path:
    """Trains an EAGLE-3 drafter for the Hugging Face model in model_dir and writes it to out_dir.

    device: where the target writes answers and features and the drafter trains ("cpu", "cuda", "cuda:1");
    the caches and checkpoints do not depend on it, so a run may resume on another device.
    regenerate_workers: CPU processes that write the answers (`regenerate`); the answers do not depend on
    it beyond bf16 rounding, so it is no data setting.
    live_features: the training sequences' features are computed for each batch (LiveFeatures) instead of
    cached first; the held-out ones are still cached (they are few and validated on repeatedly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_config = read_target_config(model_dir)
    if not 0 < train.draft_vocab_size <= target_config.vocab_size:
        raise EaglexError(
            f"--draft-vocab-size {train.draft_vocab_size} must be between 1 and the target's vocabulary "
            f"size {target_config.vocab_size}"
        )
    _check_settings(work_dir, {"model": str(Path(model_dir).resolve()), **asdict(data)})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)

    conversations = select_conversations(data.sources, data.samples, data.seed, exclude, report)
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]
    data_hours = PhaseHours(work_dir, "data", report)
    samples = build_samples(
        model, tokenizer, conversations, data, work_dir, stop_ids, exclude, data_hours, regenerate_workers
    )
    data_hours.save()
    if len(samples) <= data.val_samples:
        raise EaglexError(
            f"only {len(samples)} usable training sequences, not more than the {data.val_samples} held out: "
            "pass more data or a larger --samples"
        )
    layers = new_drafter_config(target_config, train.draft_vocab_size).feature_layers
    target = TargetFeatures(model, layers, data.features_dtype)
    features_hours = PhaseHours(work_dir, "features", report)
    stores = _feature_stores(
        target,
        samples,
        data.val_samples,
        work_dir / "features",
        target_config.hidden_size,
        live_features,
        extract_batch_tokens,
        features_hours,
    )
    features_hours.save()

    train_store = stores["train"]
    answers = train_store.column("ids")[train_store.column("loss_mask").astype(bool)]
    full_head = model.get_output_embeddings().weight.detach().cpu()
    drafter, vocab = _first_drafter(target_config, train, answers, full_head, report)
    embed = model.get_input_embeddings().weight.detach().cpu().clone()
    teacher_head = full_head[vocab.target_ids].clone()
    if not live_features:
        del model, target  # only the embedding table and the draft rows of lm_head are needed from here on

    train_hours = PhaseHours(work_dir, "train", report)
    trainer = Trainer(
        drafter,
        embed,
        teacher_head,
        train,
        work_dir / train.run_name() / "checkpoint",
        target_config.max_position_embeddings,
        train_hours,
        device,
    )
    val = trainer.train(train_store, stores["val"])
    record = _training_record(model_dir, data, train, trainer, train_hours.save(), train_store, live_features)
    record["draft_vocab_coverage"] = round(vocab.coverage, 4)
    if val is not None:
        record["validation"] = {
            "accuracy_per_step": val.accuracy,
            "chain_acceptance_estimate": val.chain_acceptance(),
        }
        report(f"validation: {val.summary()}")
    write_drafter(drafter, out_dir, target_config.max_position_embeddings, out_dtype, extra=record)
    report(f"drafter written to {out_dir}")
    return out_dir


def _feature_stores(
    target: TargetFeatures,
    samples: list[Sample],
    val_samples: int,
    folder: Path,
    hidden_size: int,
    live_features: bool,
    extract_batch_tokens: int,
    report: Callable[[str], None],
) -> dict[str, FeatureStore | LiveFeatures]:
    """The held-out sequences' features, cached; the training ones cached too, or computed per batch."""
    stores: dict[str, FeatureStore | LiveFeatures] = {}
    for split, part in (("val", samples[:val_samples]), ("train", samples[val_samples:])):
        if split == "train" and live_features:
            stores[split] = LiveFeatures(target, part)
            continue
        stores[split] = FeatureStore(folder / split, hidden_size)
        extract(target, part, stores[split], extract_batch_tokens, report, what=f"target features ({split})")
    return stores


def _first_drafter(
    target_config: TargetConfig,
    train: TrainConfig,
    answers: np.ndarray,
    full_head: torch.Tensor,
    report: Callable[[str], None],
) -> tuple[Eagle3Drafter, DraftVocab]:
    """The drafter training starts from, with its draft vocabulary: fresh, or --init-from's (its vocabulary
    kept, or rechosen on these answers with lm_head rows carried over or taken from the target's)."""
    start = _start_from(Path(train.init_from), target_config, train) if train.init_from else None
    start_ids = None if start is None else start.target_ids()
    if start_ids is not None and not train.rechoose_vocab:
        vocab = fixed_draft_vocab(start_ids.numpy(), answers, target_config.vocab_size)
    else:
        vocab = build_draft_vocab(answers, target_config.vocab_size, train.draft_vocab_size)
    coverage = f"{100 * vocab.coverage:.1f}%"
    report(f"draft vocabulary: {train.draft_vocab_size} tokens cover {coverage} of answer tokens")

    drafter = Eagle3Drafter(new_drafter_config(target_config, train.draft_vocab_size))
    if start is None:
        _init_drafter(drafter, vocab, train.seed)
    else:
        state = start.state_dict()
        if train.rechoose_vocab:
            kept = int(torch.isin(vocab.target_ids, start_ids).sum())
            report(f"lm_head: {kept} rows kept, {len(vocab.d2t) - kept} mapped from the target's")
            head = state["lm_head.weight"]
            state["lm_head.weight"] = carry_over_head(head, start_ids, vocab.target_ids, full_head)
            state["d2t"], state["t2d"] = vocab.d2t, vocab.t2d
        drafter.load_state_dict(state)
    return drafter, vocab


def _training_record(
    model_dir: Path,
    data: DataConfig,
    train: TrainConfig,
    trainer: Trainer,
    hours: dict,
    train_store: FeatureStore | LiveFeatures,
    live_features: bool,
) -> dict[str, Any]:
    """training.json's settings, budget and data, written next to the drafter."""
    record = {
        "target": str(model_dir),
        "data": asdict(data),
        "train": asdict(train),
        # Wall hours per phase over all runs (data: answer regeneration and tokenization).
        "budget": {**trainer.budget(), "wall_hours": hours},
        "train_sequences": len(train_store),
        "train_tokens_per_epoch": train_store.num_tokens,
        "train_sequences_by_features_dtype": dict(Counter(train_store.dtypes)),
        "train_features": "live" if live_features else "cached",
    }
    if train.init_from:
        earlier = Path(train.init_from) / "training.json"  # what the starting drafter cost
        record["init_from_training"] = json.loads(earlier.read_text()) if earlier.is_file() else None
    return record
