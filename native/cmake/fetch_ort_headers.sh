#!/usr/bin/env bash
# Fetches onnxruntime's C/C++ headers (Debian trixie's libonnxruntime-dev 1.21) into a cache folder and
# prints the include directory. Uses apt with private lists and cache (the system's apt state is untouched).
# The headers' C API is versioned: the newer libonnxruntime.so of the Python wheel serves it.
# Usage: fetch_ort_headers.sh [CACHE_DIR]   (default ~/.cache/eaglex/onnxruntime-headers)
set -euo pipefail
cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/eaglex/onnxruntime-headers}"
include="$cache/root/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then echo "$include"; exit 0; fi
command -v apt-get >/dev/null || { echo "error: apt-get not found; put onnxruntime 1.21+ headers in $include" >&2; exit 2; }
mkdir -p "$cache/lists/partial" "$cache/archives/partial" "$cache/work"
echo "deb http://deb.debian.org/debian trixie main" > "$cache/sources.list"
opts=(-o "Dir::Etc::sourcelist=$cache/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache" -o "APT::Sandbox::User=root" -q)
apt-get "${opts[@]}" update >&2
(cd "$cache/work" && apt-get "${opts[@]}" download libonnxruntime-dev >&2)
dpkg -x "$cache"/work/libonnxruntime-dev_*.deb "$cache/root"
rm -rf "$cache/lists" "$cache/work" "$cache"/*.bin
[ -f "$include/onnxruntime_cxx_api.h" ] || { echo "error: libonnxruntime-dev has no onnxruntime_cxx_api.h" >&2; exit 2; }
echo "$include"
