#!/usr/bin/env bash
# Sets up, builds and runs every fcvm test on a fresh Debian 12 machine (root):
#   1. installs dependencies from Debian's repositories,
#   2. checks formatting,
#   3. release build: unit, integration (with a real Prometheus), e2e and
#      package tests (e2e skip, saying why, without a Firecracker binary: see
#      README; the package test installs and purges the .deb on this machine),
#   4. ASan + UBSan build: unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
source scripts/firecracker-env.sh
if [ -n "${FCVM_FIRECRACKER_BIN:-}" ]; then
  echo "test: end-to-end tests use Firecracker at $FCVM_FIRECRACKER_BIN"
else
  echo "test: no Firecracker binary (set FCVM_FIRECRACKER_BIN or install /opt/firecracker/firecracker): e2e tests will skip"
fi

bash scripts/check-format.sh

bash scripts/build.sh release
(cd build/release && ctest --output-on-failure --timeout 900 -j 1)

bash scripts/build.sh asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build/asan && ctest --output-on-failure --timeout 900 -j 1 -LE e2e)
echo "test: all suites passed"
