"""Target features in fp32 against bfloat16 (autocast, and bf16 weights), for the drafter-training cache:

    python experiments/compare_feature_precision.py --model smollm2 --drafter DRAFTER --work-dir WORK
        [--sequences 200] [--batch-tokens 4096] [--threads 2]

Feature extraction (the frozen target's forward over every training token) is the slowest phase per token
of `train-drafter` after regeneration. This recomputes the features of WORK's validation sequences plus
`--sequences` training sequences added last to WORK (answers the drafter has not trained on when WORK grew
after it) in each precision, interleaved batch by batch, and prints:
- tokens/s per precision;
- how often each precision's greedy next token (the teacher's argmax) equals fp32's on trained positions,
  and the relative error of its features;
- DRAFTER's top-1 agreement per TTT step with the fp32 teacher when fed each precision's features: what a
  drafter trained on fp32 features loses when shown bf16 ones, a proxy for how interchangeable they are.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import harness
import torch

from eaglex.cli import resolve_model
from eaglex.exporter.checkpoints import load_drafter, read_target_config
from eaglex.train.data import Sample
from eaglex.train.features import FeatureStore, TargetFeatures, extract, length_batches
from eaglex.train.loop import StepStats, TrainConfig, Trainer

PRECISIONS = ("fp32", "bf16 autocast", "bf16 weights")


def stored_samples(store: FeatureStore, indices: list[int]) -> list[Sample]:
    ids, mask = store.column("ids"), store.column("loss_mask")
    return [
        Sample(
            ids[store.offsets[i] : store.offsets[i + 1]].tolist(),
            mask[store.offsets[i] : store.offsets[i + 1]].astype(bool).tolist(),
        )
        for i in indices
    ]


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--drafter", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--ttt-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(args.model)
    config = read_target_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    drafter = load_drafter(args.drafter, config)
    feature_layers = drafter.config.feature_layers
    stores = {s: FeatureStore(args.work_dir / "features" / s, config.hidden_size) for s in ("train", "val")}
    last = list(range(max(len(stores["train"]) - 5000, 0), len(stores["train"])))
    picked = last[:: max(len(last) // args.sequences, 1)][: args.sequences]
    samples = stored_samples(stores["val"], list(range(len(stores["val"])))) + stored_samples(
        stores["train"], picked
    )
    print(f"{len(samples)} sequences, {sum(len(s.ids) for s in samples)} tokens", flush=True)

    targets = {
        "fp32": TargetFeatures(model, feature_layers),
        "bf16 autocast": TargetFeatures(model, feature_layers, "bfloat16"),  # what --features-dtype runs
        "bf16 weights": TargetFeatures(copy.deepcopy(model).to(torch.bfloat16), feature_layers),
    }
    scratch = Path(tempfile.mkdtemp())
    out = {name: FeatureStore(scratch / name, config.hidden_size) for name in PRECISIONS}
    seconds = dict.fromkeys(PRECISIONS, 0.0)
    batches = length_batches([len(s.ids) for s in samples], args.batch_tokens)
    done: list[Sample] = []  # extract() adds what a store lacks of the samples it is given
    for n, batch in enumerate(batches):
        done += [samples[i] for i in batch]
        for name in PRECISIONS:
            started = time.perf_counter()
            extract(targets[name], done, out[name], args.batch_tokens, lambda _: None)
            seconds[name] += time.perf_counter() - started
        print(f"batch {n + 1}/{len(batches)}", flush=True)
    tokens = sum(len(s.ids) for s in samples)
    for name in PRECISIONS:
        print(f"{name}: {tokens / seconds[name]:.0f} tokens/s ({seconds['fp32'] / seconds[name]:.2f}x fp32)")

    reference = out["fp32"]
    trained = torch.from_numpy(reference.column("loss_mask").astype(bool))
    argmax = torch.tensor(reference.column("argmax"))
    features = torch.tensor(reference.column("features"), dtype=torch.float32)
    settings = TrainConfig(draft_vocab_size=len(drafter.d2t), ttt_steps=args.ttt_steps, batch_tokens=1024)
    draft_ids = drafter.target_ids()
    embed = model.get_input_embeddings().weight.detach()
    teacher_head = model.get_output_embeddings().weight.detach()[draft_ids]
    trainer = Trainer(
        drafter.eval(),
        embed,
        teacher_head,
        settings,
        scratch / "run" / "checkpoint",
        config.max_position_embeddings,
        print,
    )
    for name in PRECISIONS:
        store = out[name]
        same = (torch.tensor(store.column("argmax")) == argmax)[trained].float().mean()
        other = torch.tensor(store.column("features"), dtype=torch.float32)
        error = (other - features).norm() / features.norm()
        stats = StepStats()
        with torch.no_grad():
            for indices in length_batches(reference.lengths, settings.batch_tokens):
                batch = reference.batch(indices)
                shown = dataclasses.replace(batch, features=store.batch(indices).features)
                stats.add(trainer.forward(shown))
        print(
            f"{name}: argmax equal to fp32 on {same:.2%} of trained positions; features' relative error "
            f"{error:.2e}; drafter against the fp32 teacher: {stats.summary()}"
        )


if __name__ == "__main__":
    main()
