#!/usr/bin/env bash
# Installs every package fcvm needs to build, test and run, from Debian 12's
# own repositories. Idempotent: installs only what is missing. Needs root.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake pkg-config binutils clang-format
  # required libraries
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev libspdlog-dev libfmt-dev liburing-dev
  libgtest-dev libgmock-dev googletest
  # chosen libraries: HTTP over a Unix socket, JSON, systemd notify/journal,
  # netlink and nftables for clone networking
  libcurl4-openssl-dev nlohmann-json3-dev libsystemd-dev libssl-dev
  libnl-3-dev libnl-route-3-dev libmnl-dev libnftables-dev
  # runtime tools used by tests and the demo
  iproute2 nftables curl procps util-linux
  # metrics tests: a real Prometheus server and promtool (tests/testing/prometheus.h)
  prometheus
  # packaging and its test: dpkg-shlibdeps computes Depends, systemd-analyze
  # verifies the unit (tests/package)
  dpkg-dev systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-deps: missing packages (${missing[*]}); run as root" >&2
  exit 1
fi
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package enables and starts its own service (listening
# on every interface, port 9090). The tests start the binary themselves, so
# undo that when this script is what installed it.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
echo "setup-deps: done"
