#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (root): install dependencies,
# build, start fcvmd on a temporary socket and state directory, boot the
# project's test guest, snapshot it, clone it 8 times through the page server,
# fork the running VM live twice,
# print clone latencies and page-server statistics, and tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
source scripts/firecracker-env.sh
bash scripts/build.sh release
bin=build/release
guest="$PWD/$bin/tests/guest/fcvm-test-guest.elf"

if [ -z "${FCVM_FIRECRACKER_BIN:-}" ] || [ ! -x "$FCVM_FIRECRACKER_BIN" ]; then
  cat >&2 <<'MSG'
demo: no Firecracker binary. fcvm drives Firecracker 1.12 or later (tested with
1.14.2), which is not a Debian package and which fcvm does not download. Put the
x86_64 binary at /opt/firecracker/firecracker (chmod +x), or set
FCVM_FIRECRACKER_BIN=/path/to/firecracker, then run this again.
MSG
  exit 1
fi

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

# Every Firecracker runs under the jailer (docs/security.md) when there is one
# beside Firecracker (or FCVM_JAILER_BIN); otherwise the demo says so and runs
# unjailed, as root.
jail_args=(--no-jailer)
jailer="${FCVM_JAILER_BIN:-$(dirname "$FCVM_FIRECRACKER_BIN")/jailer}"
if [ -x "$jailer" ]; then
  jail_args=(--jailer "$jailer")
else
  echo "demo: no jailer at $jailer: Firecracker runs unjailed, as root (set FCVM_JAILER_BIN to jail it)" >&2
fi
"$bin/daemon/fcvmd" --socket "$sock" --state-dir "$work/state" --firecracker "$FCVM_FIRECRACKER_BIN" \
  "${jail_args[@]}" --log-level warn 2>"$work/fcvmd.log" &
daemon_pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done

ctl() { "$bin/cli/fcvmctl" --socket "$sock" "$@"; }
say() { printf '\n\033[1m$ fcvmctl %s\033[0m\n' "$*"; ctl "$@"; }
console_of() { ctl get "$1" --json | sed -n 's/.*"console_log_path": "\([^"]*\)".*/\1/p'; }
wait_ticks() {  # console file, count
  for _ in $(seq 300); do
    [ "$(grep -c 'FCVM-GUEST TICK [0-9]* OK' "$1" 2>/dev/null || true)" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "demo: no OK ticks in $1" >&2; return 1
}

say version
say run --name demo-base --kernel "$guest" --memory-mib 128 \
  --boot-args "console=ttyS0 fcvm.read_mib=8 fcvm.write_mib=2 fcvm.tick_ms=500"
base_console="$(console_of demo-base)"
wait_ticks "$base_console" 2
echo "guest console: $(grep 'FCVM-GUEST' "$base_console" | tail -n 1)"

say snapshot create demo-base --name demo-golden
# One clone records the pages the guest touches (its working set); later
# clones get that set installed before their vCPUs run.
say clone demo-golden --count 1 --prefetch record --name-prefix demo-recorder
sleep 2
ctl rm demo-recorder-0 >/dev/null
sleep 0.5

say clone demo-golden --count 8 --name-prefix demo-clone
for i in $(seq 0 7); do
  c="$(console_of "demo-clone-$i")"
  wait_ticks "$c" 2
  echo "demo-clone-$i: $(grep 'FCVM-GUEST TICK' "$c" | tail -n 1 | tr -d '\r')"
done

# Live fork: the running base VM is paused only while the pages it wrote
# since its snapshot are written, as a layer over demo-golden.
say fork demo-base --count 2 --name-prefix demo-fork --snapshot-name demo-fork-layer
for i in 0 1; do
  c="$(console_of "demo-fork-$i")"
  wait_ticks "$c" 2
  echo "demo-fork-$i: $(grep 'FCVM-GUEST TICK' "$c" | tail -n 1 | tr -d '\r')"
done

say stats
say ls
say rm $(for i in $(seq 0 7); do echo "demo-clone-$i"; done) demo-fork-0 demo-fork-1 demo-base
say snapshot rm demo-fork-layer
say snapshot rm demo-golden

kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=""
echo
echo "demo: done; fcvmd stopped cleanly and left nothing behind"
