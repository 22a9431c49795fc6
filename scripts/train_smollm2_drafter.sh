#!/usr/bin/env bash
# Trains the EAGLE-3 drafter for SmolLM2-135M-Instruct (issue 3) on a 2-core CPU, from data on PyPI only:
# 1600 ShareGPT first turns (none containing an MT-bench/HumanEval/GSM8K/XSum prompt), each answered
# again by SmolLM2 itself (greedy, up to 160 tokens), then training-time test with 5 steps (the default
# tree is 5 deep) in two runs over the same cached features:
#   1. 3 epochs from random weights, 2048-token batches, peak lr 5e-4;
#   2. 3 more epochs from the result of run 1, 1024-token batches (twice the optimizer steps per epoch),
#      a fresh warmup and cosine decay from 3e-4. Run 1 was still learning at its end (validation top-1
#      0.24 -> 0.32 -> 0.34 over its epochs) when its learning rate had decayed.
# One torch thread: on a busy shared 2-core machine two threads wait on each other (measured 85 vs 136
# training tokens/s).
#
# Resumable: rerun the same command after an interruption. Answers, target features (fp16) and each run's
# checkpoints stay in $WORK; the drafter (official EAGLE-3 format, fp16, ~20 MB) is written to $OUT at
# the end, with training.json recording the settings and the budget of both runs.
#
#   bash scripts/train_smollm2_drafter.sh            # -> drafters/smollm2-135m-instruct
#   OUT=/tmp/drafter nice -n 10 bash scripts/train_smollm2_drafter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$HOME/.cache/eaglex/train/smollm2}
OUT=${OUT:-drafters/smollm2-135m-instruct}
common=(--model smollm2 --work-dir "$WORK" --data sharegpt --samples 1600 --regenerate 1600
  --max-new-tokens 160 --max-length 1024 --val-samples 32 --draft-vocab-size 8192 --ttt-steps 5
  --seed 0 --threads 1)
if [ ! -f "$WORK/run1-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --out "$WORK/run1-drafter" --dtype float32 \
    --epochs 3 --batch-tokens 2048 --lr 5e-4 --warmup-steps 30
fi
exec eaglex train-drafter "${common[@]}" --out "$OUT" --dtype float16 --init-from "$WORK/run1-drafter" \
  --epochs 3 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20 "$@"
