#!/usr/bin/env bash
# Trains the EAGLE-3 drafter for SmolLM2-135M-Instruct (issue 3) on a 2-core CPU, from data on PyPI only:
# ShareGPT conversations (none containing an MT-bench/HumanEval/GSM8K/XSum prompt), their first user turns
# (from run 8 the second ones too) answered again by SmolLM2 itself (greedy, up to 160 tokens), then
# training-time test with 5 steps (the default tree is 5 deep) in nine runs:
#   1. the first 1600 conversations: 3 epochs from random weights, 2048-token batches, peak lr 5e-4;
#   2. the same data: 3 more epochs from run 1, 1024-token batches (twice the optimizer steps per epoch),
#      a fresh warmup and cosine decay from 3e-4 (run 1 was still learning when its lr had decayed);
#   3. the first 4000 conversations (the 1600 of runs 1-2 among them): 1 epoch from run 2, same schedule.
#      Its work folder starts with runs 1-2's answers: greedy answers depend a little on which prompts
#      share a padded batch, and this keeps the 1600 identical.
#   4. the first 6000 conversations: 1 epoch from run 3, same schedule. Its work folder starts with run 3's
#      answers and features, so only the 2000 new conversations are regenerated and extracted.
#   5. the first 8000 conversations: 2 epochs from run 4, same schedule, its work folder seeded from run 4's.
#   6. the first 12000 conversations: 1 epoch from run 5, same schedule, with the draft vocabulary chosen
#      afresh on all 12000 (--rechoose-vocab: run 2's, chosen on 1600, covered 93.6% of their answers)
#      and bf16 matmuls (--bf16, 1.4x faster here; the first 18% of run 6 ran in fp32).
#   7. all 17,344 conversations: 1 epoch from run 6, same schedule, vocabulary rechosen again; the ~5,000 new
#      answers written by a bf16 copy of SmolLM2 (--regenerate-dtype bfloat16: 1.8x faster here, 98.6% of
#      its answer tokens are the fp32 model's own greedy choice; features and teacher stay fp32).
#   8. the same conversations with their second user turn answered by SmolLM2 after its own first answer
#      (--regenerate-turns 2; a third turn, ~9,400 more answers after prompts of ~410 tokens, would have
#      cost ~4 more hours here), each such conversation one sequence with the loss on both answers
#      (--merge-turns), 1 epoch from run 7, in a fresh work folder where bf16 writes every
#      answer and computes every feature (--features-dtype bfloat16: 1.84x faster here, and run 6's
#      drafter keeps its top-1 on such features), with a larger draft vocabulary rechosen on it: 12,288
#      tokens (~24.5 MB), since the 8,192 missed 8.1% of the target's MT-bench answer tokens.
#  11. run 8's data made again in a fresh work folder, plus 16,000 requests SmolLM2 writes itself answered
#      the same way, 1 epoch from run 8 with the vocabulary rechosen, features computed as each batch
#      trains (scripts/continue_smollm2_drafter.sh, which can resume it from a pack of its work folder kept
#      outside the repository: PACK=DIR). Runs 9 and 10 were trials that did not ship (docs/TRAINING.md).
# One torch thread: on a busy shared 2-core machine two threads wait on each other (measured 85 vs 136
# training tokens/s). On an otherwise idle machine append `--threads 2`: extra arguments go to runs 3 to 11,
# which were made so.
#
# Resumable: rerun the same command after an interruption. Answers, target features (fp16) and each
# run's checkpoints stay in $WORK, $WORK-4k, $WORK-6k, $WORK-8k, $WORK-12k, $WORK-17k (runs 4-7 each
# take over the earlier folder's features), $WORK-17k-turns2 and $WORK-run11; the drafter
# (official EAGLE-3 format, fp16, ~24.5 MB) is written to $OUT at the end, with training.json recording the
# settings and the budget of every run.
#
#   bash scripts/train_smollm2_drafter.sh            # -> drafters/smollm2-135m-instruct
#   OUT=/tmp/drafter nice -n 10 bash scripts/train_smollm2_drafter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$HOME/.cache/eaglex/train/smollm2}
OUT=${OUT:-drafters/smollm2-135m-instruct}
common=(--model smollm2 --data sharegpt --max-new-tokens 160 --max-length 1024 --val-samples 32
  --draft-vocab-size 8192 --ttt-steps 5 --seed 0 --threads 1)
first=(--work-dir "$WORK" --samples 1600 --regenerate 1600)

# A larger data set's work folder starts with the previous one's answers and features (the feature cache
# grows: only new sequences are then regenerated and extracted), assembled under a temporary name so an
# interrupted step is never taken for a seeded folder. The previous run has finished, so its features
# (4.6 KB a token, 12 GB after run 6) move rather than being copied.
seed_work_folder() {
  [ -d "$2" ] && return
  mkdir -p "$2.tmp"
  cp "$1/regenerated.jsonl" "$1/hours.json" "$2.tmp/"
  if [ -d "$1/features" ]; then mv "$1/features" "$2.tmp/"; fi
  mv "$2.tmp" "$2"
}
if [ ! -f "$WORK/run1-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" "${first[@]}" --out "$WORK/run1-drafter" --dtype float32 \
    --epochs 3 --batch-tokens 2048 --lr 5e-4 --warmup-steps 30
fi
if [ ! -f "$WORK/run2-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" "${first[@]}" --out "$WORK/run2-drafter" --dtype float16 \
    --init-from "$WORK/run1-drafter" --epochs 3 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20
fi
if [ ! -f "$WORK-4k/run3-drafter/model.safetensors" ]; then
  mkdir -p "$WORK-4k"
  [ -f "$WORK-4k/regenerated.jsonl" ] || cp "$WORK/regenerated.jsonl" "$WORK-4k/"
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-4k" --samples 4000 --regenerate 4000 \
    --out "$WORK-4k/run3-drafter" --dtype float16 --init-from "$WORK/run2-drafter" \
    --epochs 1 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20 "$@"
fi
seed_work_folder "$WORK-4k" "$WORK-6k"
if [ ! -f "$WORK-6k/run4-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-6k" --samples 6000 --regenerate 6000 \
    --out "$WORK-6k/run4-drafter" --dtype float16 --init-from "$WORK-4k/run3-drafter" \
    --epochs 1 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20 "$@"
fi
seed_work_folder "$WORK-6k" "$WORK-8k"
if [ ! -f "$WORK-8k/run5-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-8k" --samples 8000 --regenerate 8000 \
    --out "$WORK-8k/run5-drafter" --dtype float16 --init-from "$WORK-6k/run4-drafter" \
    --epochs 2 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20 "$@"
fi
seed_work_folder "$WORK-8k" "$WORK-12k"
if [ ! -f "$WORK-12k/run6-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-12k" --samples 12000 --regenerate 12000 \
    --out "$WORK-12k/run6-drafter" --dtype float16 --init-from "$WORK-8k/run5-drafter" --rechoose-vocab \
    --bf16 --epochs 1 --batch-tokens 1024 --lr 3e-4 --warmup-steps 20 "$@"
fi
seed_work_folder "$WORK-12k" "$WORK-17k"
if [ ! -f "$WORK-17k/run7-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-17k" --samples 0 --regenerate 17346 \
    --regenerate-dtype bfloat16 --out "$WORK-17k/run7-drafter" --dtype float16 \
    --init-from "$WORK-12k/run6-drafter" --rechoose-vocab --bf16 --epochs 1 --batch-tokens 1024 --lr 3e-4 \
    --warmup-steps 20 "$@"
fi
if [ ! -f "$WORK-17k-turns2/run8-drafter/model.safetensors" ]; then
  eaglex train-drafter "${common[@]}" --work-dir "$WORK-17k-turns2" --samples 0 --regenerate 17346 \
    --regenerate-turns 2 --merge-turns --regenerate-dtype bfloat16 --features-dtype bfloat16 \
    --out "$WORK-17k-turns2/run8-drafter" --dtype float16 --init-from "$WORK-17k/run7-drafter" \
    --rechoose-vocab --draft-vocab-size 12288 --bf16 --epochs 1 --batch-tokens 1024 --lr 3e-4 \
    --warmup-steps 20 "$@"
fi
INIT=$WORK-17k-turns2/run8-drafter WORK=$WORK-run11 OUT=$OUT exec bash scripts/continue_smollm2_drafter.sh "$@"
