#pragma once

// The VM manager: every VM's lifecycle, the snapshot store, clones, and the
// page server they use. fcvmd's services are thin wrappers around it.
//
// Blocking: every public method except List*/Get*/Subscribe/PageServerStats
// blocks for the duration of the operation (spawning Firecracker, API calls,
// disk copies). The daemon calls them from its own worker threads, never from
// gRPC threads. Operations on one VM are serialised (one at a time per VM);
// operations on different VMs run in parallel.
//
// Persistence: each VM's record (config, pid, state, clone source) lives in
// <state>/vms/<id>/vm.json, rewritten atomically at each state change. On
// Create, the manager reconciles what a previous fcvmd left (see Reconcile).
//
// Drive paths: a snapshot bakes in the paths of its VM's drives and
// Firecracker cannot override them at load. Every VM therefore runs in its
// own mount namespace in which its private directory <state>/vms/<id>/drives
// is bind-mounted over the fixed <state>/drives; its drives are always
// "<state>/drives/<drive_id>", and each clone sees its own copies there.
//
// Errors follow house style: InvalidArgument for bad requests, NotFound for
// unknown refs, FailedPrecondition for the wrong state, ResourceExhausted for
// memory/disk, Unavailable when Firecracker is not configured.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/uffd/page_server.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

struct ManagerOptions {
  std::string state_dir;
  std::string firecracker_bin;  // empty: VM operations answer Unavailable
  // Page server loop threads; 0 = one per core.
  int page_server_threads = 0;
  // Clones restored at once within one CloneSnapshot request, by default.
  uint32_t default_clone_parallelism = 4;
  // Deadline of Firecracker start + snapshot load per clone.
  absl::Duration clone_timeout = absl::Seconds(30);
  // Size cap of each VM's console log.
  size_t console_max_bytes = 1 << 20;
  // Reconcile the state directory at Create (tests may turn it off).
  bool reconcile = true;
  // Pre-started, unconfigured Firecracker processes kept ready so that a
  // clone (or a boot) skips process start-up. 0 turns the pool off. Pooled
  // processes die with fcvmd (PR_SET_PDEATHSIG), and so do the VMs made from
  // them: see docs/operations.md.
  uint32_t warm_pool_size = 2;
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
};

struct RunRequest {
  std::string name;  // empty: generated
  std::map<std::string, std::string> labels;
  VmConfig config;
};

struct ListFilter {
  std::map<std::string, std::string> label_selector;
  std::vector<VmState> states;  // empty = all
  std::string snapshot_ref;     // empty = all
};

struct DeleteResult {
  std::string id;
  bool forced = false;  // SIGKILL was needed
};

struct SnapshotRequest {
  std::string vm_ref;
  std::string name;  // empty: generated
  std::map<std::string, std::string> labels;
  AfterSnapshot after = AfterSnapshot::kResume;
};

struct CloneRequest {
  std::string snapshot_ref;
  uint32_t count = 1;  // 1-1024
  MemoryBackend backend = MemoryBackend::kUffd;
  PrefetchPolicy policy = PrefetchPolicy::kAuto;
  std::string name_prefix;  // default: the snapshot's name
  std::map<std::string, std::string> labels;
  bool stay_paused = false;
  bool all_or_nothing = false;
  uint32_t parallelism = 0;  // 0 = default
  // Host ports published by each clone; only sensible with count 1 (a host
  // port can be published once). Clones of a snapshot with a network always
  // get their own namespace and tap; one without cannot gain a network.
  std::vector<PortMapping> publish;
  // Called as each clone finishes (succeeded or failed), from the worker that
  // restored it; for progress reports. May be empty.
  std::function<void(const VmInfo&)> on_clone_done;
};

struct CloneResult {
  std::vector<VmInfo> clones;  // in index order; failed ones have state kFailed + error
  absl::Duration total;
  uint32_t succeeded = 0;
  uint32_t failed = 0;
};

struct DeleteSnapshotResult {
  std::string id;
  std::vector<std::string> stopped_vm_ids;
};

class Manager {
 public:
  static absl::StatusOr<std::unique_ptr<Manager>> Create(const ManagerOptions& options);
  // Stops the page server (clones that depend on it are killed: nobody could
  // serve their faults) and releases File-backed VMs without killing them, so
  // a restarted fcvmd re-adopts them.
  ~Manager();

  absl::StatusOr<VmInfo> Run(const RunRequest& request);
  absl::StatusOr<VmInfo> Get(const std::string& ref) const;
  std::vector<VmInfo> List(const ListFilter& filter) const;
  absl::StatusOr<VmInfo> Pause(const std::string& ref);
  absl::StatusOr<VmInfo> Resume(const std::string& ref);
  // Graceful: SIGTERM, wait `grace`, then SIGKILL. force: SIGKILL at once.
  absl::StatusOr<DeleteResult> Delete(const std::string& ref, bool force, absl::Duration grace);

  absl::StatusOr<SnapshotInfo> CreateSnapshot(const SnapshotRequest& request);
  absl::StatusOr<SnapshotInfo> GetSnapshot(const std::string& ref) const;
  std::vector<SnapshotInfo> ListSnapshots(const std::map<std::string, std::string>& label_selector) const;
  absl::StatusOr<DeleteSnapshotResult> DeleteSnapshot(const std::string& ref, bool force);

  absl::StatusOr<CloneResult> Clone(const CloneRequest& request);

  // The page server's counters; `vm_ref` limits the sessions to one VM.
  absl::StatusOr<uffd::ServerStats> PageServerStats() const;

  // Every lifecycle event is passed to each subscriber (on the thread that
  // caused it; keep it quick). Returns a token for Unsubscribe.
  uint64_t Subscribe(std::function<void(const Event&)> callback);
  void Unsubscribe(uint64_t token);

  const ManagerOptions& options() const;
  const std::string& firecracker_version() const;

  struct Impl;

 private:
  explicit Manager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcvm::vm
