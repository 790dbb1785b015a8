# Sourced by the scripts: finds a Firecracker binary for the end-to-end tests
# and the demo. FCVM_FIRECRACKER_BIN wins; otherwise the conventional place
# /opt/firecracker/firecracker (outside the repo; see README).
if [ -z "${FCVM_FIRECRACKER_BIN:-}" ] && [ -x /opt/firecracker/firecracker ]; then
  export FCVM_FIRECRACKER_BIN=/opt/firecracker/firecracker
fi
