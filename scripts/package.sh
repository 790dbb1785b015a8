#!/usr/bin/env bash
# Builds the Debian package from a release build: scripts/package.sh [OUTDIR]
# (default build/package). Install it with `dpkg -i OUTDIR/fcvm_*.deb`;
# docs/operations.md says what it contains.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/package}"
bash scripts/build.sh release
mkdir -p "$out"
cpack -G DEB --config build/release/CPackConfig.cmake -B "$out"
rm -rf "$out/_CPack_Packages"
ls -1 "$out"/*.deb
