#!/usr/bin/env bash
# train-drafter on an NVIDIA GPU (the device machine's image has torch and transformers; it is offline).
# First, here: python scripts/prepare_gpu_train_check.py (gathers .device/, which the run must carry).
# Then there: the CUDA tests (a CUDA run matches the CPU run and resumes on the CPU), and the throughput of
# each phase at SmolLM2-135M's size (scripts/gpu_train_throughput.py). A few minutes; installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OUT="${OUT:-/tmp}"
[ -f .device/conversations.jsonl ] || { echo "error: no .device/: run scripts/prepare_gpu_train_check.py"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
status=0
python3 -m pytest -q -s -p no:cacheprovider tests/test_train_cuda.py 2>&1 | tee "$OUT/pytest.log" || status=1
python3 scripts/gpu_train_throughput.py 2>&1 | tee "$OUT/throughput.log" || status=1
exit $status
