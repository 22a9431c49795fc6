"""Target-feature extraction at several batch sizes (padded tokens per target call), on one set of sequences:

    python experiments/compare_feature_batch.py [--batch-tokens 4096,1024] [--sequences 48] [--threads 2]
        [--reps 2] [--dtype bfloat16]

Runs SmolLM2 as `train-drafter` does for its feature cache (`TargetFeatures`, `extract` into a temporary
`FeatureStore`, fsyncs included) over `--sequences` random-token sequences whose lengths are spread evenly
over 64-1024 tokens, like a length-sorted training set; each setting is timed --reps times (2),
interleaved in rotating order (experiments/harness.py), and the fastest time is kept. Prints tokens/s per
setting and the largest feature difference from the first setting's, relative to its largest feature
(bf16 rounding depends on the matrix shapes). Only ratios within one run mean anything on a shared
machine.
"""

from __future__ import annotations

import tempfile
import time

import harness
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from eaglex.exporter.checkpoints import read_target_config
from eaglex.exporter.fetch import fetch_smollm2
from eaglex.train.checkpoint import new_drafter_config
from eaglex.train.data import Sample
from eaglex.train.features import FeatureStore, TargetFeatures, extract


def main() -> None:
    parser = harness.parser(__doc__, reps=2)
    parser.add_argument("--batch-tokens", default="4096,1024", help="comma-separated")
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [int(b) for b in args.batch_tokens.split(",")]
    model_dir = fetch_smollm2(progress=lambda _: None)
    config = read_target_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    target = TargetFeatures(model, new_drafter_config(config, 1024).feature_layers, args.dtype)

    rng = np.random.default_rng(0)
    lengths = np.linspace(64, 1024, args.sequences).astype(int)
    samples = [Sample(rng.integers(0, config.vocab_size, n).tolist(), [True] * n) for n in lengths]
    tokens = int(lengths.sum())
    print(f"{len(samples)} sequences of {lengths[0]}-{lengths[-1]} tokens, {tokens} in all; {args.dtype}")

    features = {}

    def timed(batch_tokens: int):
        def once() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                store = FeatureStore(tmp, config.hidden_size)
                started = time.perf_counter()
                extract(target, samples, store, batch_tokens, lambda _: None)
                seconds = time.perf_counter() - started
                features[batch_tokens] = np.array(store.column("features"), dtype=np.float32)
            return seconds

        return once

    times = harness.interleaved({b: timed(b) for b in settings}, reps=args.reps)
    best = {b: min(seconds) for b, seconds in times.items()}
    reference = features[settings[0]]
    scale = np.abs(reference).max()  # the residual stream's few huge activations set the fp16 scale
    for batch_tokens in settings:
        difference = np.abs(features[batch_tokens] - reference).max() / scale
        seconds = best[batch_tokens]
        print(
            f"batch tokens {batch_tokens:5d}: {seconds:6.1f} s, {tokens / seconds:6.0f} tokens/s, "
            f"{best[settings[0]] / seconds:.2f}x; relative difference {difference:.2g}"
        )


if __name__ == "__main__":
    main()
