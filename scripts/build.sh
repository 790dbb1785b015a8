#!/usr/bin/env bash
# Configures and builds one flavour of fcvm: scripts/build.sh [release|asan].
# Build trees live under build/ in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-release}"
case "$flavour" in
  release) extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) extra=(-DCMAKE_BUILD_TYPE=Debug -DFCVM_SANITIZE=ON) ;;
  *) echo "usage: scripts/build.sh [release|asan]" >&2; exit 2 ;;
esac
jobs="$(nproc)"
cmake -S . -B "build/$flavour" "${extra[@]}" >/dev/null
start=$(date +%s)
cmake --build "build/$flavour" -j "$jobs"
echo "build[$flavour]: $(( $(date +%s) - start ))s"
