#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (root): install dependencies,
# build, start fcvmd on a temporary socket and state directory, talk to it
# with fcvmctl, and stop it again, leaving nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
source scripts/firecracker-env.sh
bash scripts/build.sh release
bin=build/release

work="$(mktemp -d /tmp/fcvm-demo.XXXXXX)"
sock="$work/fcvmd.sock"
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fc_args=()
[ -n "${FCVM_FIRECRACKER_BIN:-}" ] && fc_args=(--firecracker "$FCVM_FIRECRACKER_BIN")
"$bin/daemon/fcvmd" --socket "$sock" --state-dir "$work/state" "${fc_args[@]}" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

ctl() { echo "\$ fcvmctl $*"; "$bin/cli/fcvmctl" --socket "$sock" "$@"; }
ctl version
ctl ls

kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=""
echo "demo: fcvmd stopped cleanly"
