#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, nvcc, CMake and PyTorch (the device machine's image has them):
# builds the tree-attention CUDA kernel for this GPU and prints its parity with the numpy reference and
# torch's SDPA (fp32, fp16, bf16; 1 to 60 tree nodes, GQA ratios 1 to 4, head dims 16 to 128), then
# timings against SDPA. Runs in a few minutes; installs nothing from the network.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 EAGLEX_CACHE="${EAGLEX_CACHE:-/tmp/eaglex-cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -1
# eaglex itself, without dependencies (the machine is offline; numpy and torch are there).
python3 -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
python3 scripts/gpu_check.py
if python3 -c "import tensorrt" 2>/dev/null; then
  python3 -m pytest -q tests/test_tensorrt.py
else
  echo "TensorRT: not installed here; tests/test_tensorrt.py skipped"
fi
