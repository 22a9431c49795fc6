#!/usr/bin/env bash
# Run 11: trains the shipped SmolLM2-135M-Instruct drafter (run 8 of scripts/train_smollm2_drafter.sh)
# further on run 9's recipe, the one that reached 3.02 tokens per pass on MT-bench before it was lost with
# its machine (docs/TRAINING.md): every ShareGPT conversation's first two user turns answered again by
# SmolLM2 in bf16 and merged into one sequence, plus 16,000 requests SmolLM2 writes itself, answered the
# same way; features under bf16 autocast; one epoch from run 8 with the 12,288-token vocabulary rechosen.
#
# It spans sessions, and machine caches do not outlive a machine, so the answers and the training can
# travel as a pack (scripts/work_data.py pack, with --checkpoints once training has begun; trainer/datapack.py)
# kept OUTSIDE the repository: set PACK=DIR to seed the work folder from one (files the folder already has
# are kept), then the run resumes from whatever is done. Without a pack everything is regenerated, which is
# what a fresh clone does: the repository holds source only, and the packs of run 11 that were once
# committed under drafters/data/ were removed from the tree (still in git history: `git archive e172900
# drafters/data/smollm2-run11 | tar -x -C /tmp` gives PACK=/tmp/drafters/data/smollm2-run11).
# Features are computed for each batch as it trains (--live-features): cached, they would fill ~43 GB that
# no session keeps for the next, and the epoch's ~5 hours of features and training take more than one
# session. Two torch threads (these runs had the machine to themselves), shared by two processes while
# answers are written.
#
# It starts from run 8's drafter: $INIT, or else the one shipped until run 11 replaced it, taken from git
# history (commit c86d5ac). Run 11 finished on 2026-12-05 and ships in drafters/smollm2-135m-instruct.
#
#   bash scripts/continue_smollm2_drafter.sh        # -> ~/.cache/eaglex/train/smollm2-run11/run11-drafter
#   python scripts/work_data.py pack --checkpoints ~/.cache/eaglex/train/smollm2-run11 /somewhere/run11-pack
#   PACK=/somewhere/run11-pack bash scripts/continue_smollm2_drafter.sh   # on the next machine
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$HOME/.cache/eaglex/train/smollm2-run11}
if [ -n "${PACK:-}" ]; then python scripts/work_data.py unpack "$PACK" "$WORK"; fi
INIT=${INIT:-$WORK/run8-drafter}
if [ ! -f "$INIT/model.safetensors" ]; then
  mkdir -p "$INIT.tmp"
  for f in config.json model.safetensors training.json; do
    git show "c86d5ac:drafters/smollm2-135m-instruct/$f" > "$INIT.tmp/$f"
  done
  mv "$INIT.tmp" "$INIT"
fi
exec eaglex train-drafter --model smollm2 --data sharegpt --max-new-tokens 160 --max-length 1024 \
  --val-samples 32 --draft-vocab-size 12288 --ttt-steps 5 --seed 0 --threads 2 --regenerate-workers 2 \
  --work-dir "$WORK" --samples 0 --regenerate 17346 --regenerate-turns 2 --merge-turns --self-prompts 16000 \
  --regenerate-dtype bfloat16 --features-dtype bfloat16 --live-features --out "${OUT:-$WORK/run11-drafter}" --dtype float16 \
  --init-from "$INIT" --rechoose-vocab --bf16 --epochs 1 --batch-tokens 1024 \
  --lr 3e-4 --warmup-steps 20 "$@"
