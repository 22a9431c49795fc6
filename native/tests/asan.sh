#!/usr/bin/env bash
# AddressSanitizer + LeakSanitizer + UBSan over libeaglex: builds native/ with EAGLEX_SANITIZE=ON and runs
# 2 engines x 34 rounds x 3 prompts (204 generations, two threads at once), prompt lookup on repetitive
# prompts, and the bad-input checks.
# Too slow to build for CI's budget (minutes on 2 cores); run it after changing native/src.
#   native/tests/asan.sh ARTIFACT [BUILD_DIR]    (ARTIFACT: a small one, e.g. a tiny test export)
set -euo pipefail
artifact="$1"
build="${2:-${TMPDIR:-/tmp}/eaglex-asan-build}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cmake -S "$here" -B "$build" -DEAGLEX_SANITIZE=ON -DEAGLEX_PYTHON="${PYTHON:-python3}" >/dev/null
cmake --build "$build" -j 2 >/dev/null
damaged="$(mktemp -d)"
trap 'rm -rf "$damaged"' EXIT
cp -r "$artifact"/. "$damaged"
truncate -s -10 "$damaged/$(ls "$damaged" | grep -m1 '\.onnx\.data$')"
printf '5 17 42\n1 9 33 70 2 101 64\n120 3\n' | "$build/eaglex_c_test" threads "$artifact" 34
printf '5 6 7 40 41 5 6 7 40 41 5\n9 9 9 9 9 9\n' |
  "$build/eaglex_c_test" generate "$artifact" 1 ngram=6 max_new=60 stop_at_eos=0 | grep -c '^ids:'
"$build/eaglex_c_test" errors "$artifact" "$damaged" | tail -1
echo "asan: clean"
