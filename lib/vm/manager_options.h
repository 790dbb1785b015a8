#pragma once

// How a Manager is set up; fcvmd's DaemonOptions embeds it, and its flags
// write straight into it.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace fcvm::metrics {
class Registry;
}  // namespace fcvm::metrics

namespace fcvm::vm {

struct ManagerOptions {
  // Where VMs, snapshots and networks keep their state; absolute.
  std::string state_dir = "/var/lib/fcvm";
  std::string firecracker_bin;  // empty: VM operations answer Unavailable
  // The jailer: every Firecracker then runs under it, as its own uid/gid in
  // its own chroot, PID namespace and cgroup (docs/security.md). Empty runs
  // Firecracker as root in fcvmd's namespaces (development only).
  std::string jailer_bin;
  // Where the chroots go; empty: <state_dir>/jail. Same file system as the
  // state directory (snapshot files are hard-linked into chroots).
  std::string jail_dir;
  // The uids (= gids) leased to jailed VMs, one per VM: [uid_base,
  // uid_base + uid_count). The default range sits above systemd's
  // container range.
  uint32_t uid_base = 0x70000000;
  uint32_t uid_count = 65536;
  // Page server loop threads; 0 = one per core.
  int page_server_threads = 0;
  // Clones restored at once within one CloneSnapshot request, by default,
  // and at most across all requests (the clone executor's threads).
  uint32_t default_clone_parallelism = 4;
  uint32_t clone_threads = 32;
  // Deadline of Firecracker start + snapshot load per clone.
  absl::Duration clone_timeout = absl::Seconds(30);
  // Size cap of each VM's console log.
  size_t console_max_bytes = 1 << 20;
  // Reconcile the state directory at Create (tests may turn it off).
  bool reconcile = true;
  // Pre-started, unconfigured Firecracker processes kept ready so that a
  // clone (or a boot) skips process start-up. 0 turns the pool off. A VM
  // made from a pooled process outlives fcvmd like any other; unused pooled
  // processes are killed at stop, or by the next start-up after a crash:
  // see docs/operations.md.
  uint32_t warm_pool_size = 2;
  // Every Firecracker process started (warm pool, boots, clones of either
  // backend) gets PR_SET_MEMORY_MERGE before exec, so that KSM can merge the
  // identical pages of UFFD clones, which the page server copies into each
  // clone's private memory (File clones share the page cache already; for
  // them only their written pages are candidates). Merging needs ksmd
  // running: fcvmd --ksm=manage starts it, --ksm=merge leaves it to the
  // host (docs/operations.md, "Memory merging"). Hugetlbfs memory is never
  // merged.
  bool memory_merge = false;
  // Events kept for WatchEvents subscribers that start from the backlog.
  size_t event_backlog = 4096;
  // Per-VM networks (lib/net): one namespace per VM with its tap, a veth to
  // the host with a unique address from `network_pool`, NAT both ways. When
  // the host cannot do it (no nftables), VMs asking for a network get
  // Unavailable with the reason; everything else works.
  bool networking = true;
  std::string network_pool = "10.200.0.0/16";
  // Prefix of every namespace, device and nft table fcvm creates; start-up
  // removes orphans carrying it, so two fcvmd on one host need different
  // prefixes (and pools). 1-6 characters, a letter first.
  std::string network_prefix = "fcvm";
  // Host interface to MASQUERADE guest traffic through; empty = none.
  std::string network_uplink;
  // Where the manager's Prometheus metrics go (lib/vm/vm_metrics.h); not
  // owned, must outlive the manager. Null: nowhere.
  metrics::Registry* metrics_registry = nullptr;
};

}  // namespace fcvm::vm
