#pragma once

// What the manager's operations share (internal to lib/vm). Manager is the
// facade; each operation lives in its own file and works on a Core:
//
//   boot.cc        Run: a VM booted from a kernel
//   clone.cc       Clone: N VMs restored from a snapshot
//   snapshots.cc   snapshot create, list, delete
//   lifecycle.cc   pause, resume, delete, and a process exiting on its own
//   reconcile.cc   start-up: what a previous fcvmd left
//   provision.cc   memory and disk checks, drives, process + network setup
//
// Locking order: a VM's `op` lock, then the registry's lock (never the other
// way); nothing is called back into while a lock of the registry, the event
// log or the operation tracker is held.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/cancel.h"
#include "lib/firecracker/uid_pool.h"
#include "lib/storage/snapshot_store.h"
#include "lib/vm/env.h"
#include "lib/vm/events.h"
#include "lib/vm/executor.h"
#include "lib/vm/manager_options.h"
#include "lib/vm/registry.h"
#include "lib/vm/supervisor.h"
#include "lib/vm/types.h"
#include "lib/vm/vm_metrics.h"
#include "lib/vm/warm_pool.h"

namespace fcvm::vm {

// The operations in flight: each gets a token that the caller's cancellation
// and the manager's shutdown both cancel, and the manager waits for them all
// before it tears anything down.
class Operations {
 public:
  class Op {
   public:
    Op() = default;
    Op(Op&& other) noexcept { *this = std::move(other); }
    Op& operator=(Op&& other) noexcept;
    ~Op();
    const CancelToken& token() const { return token_; }

   private:
    friend class Operations;
    Operations* ops_ = nullptr;
    uint64_t id_ = 0;
    CancelToken token_;
  };

  // Unavailable "fcvmd is shutting down" once Shutdown began.
  absl::StatusOr<Op> Begin(const CancelToken& caller);
  // Refuses new operations, cancels the running ones with `why` and waits
  // until they have all ended.
  void Shutdown(const absl::Status& why);
  bool shutting_down() const;

 private:
  void End(uint64_t id);
  mutable absl::Mutex mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status why_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<CancelSource>> running_ ABSL_GUARDED_BY(mu_);
};

struct Core {
  Core(const ManagerOptions& options, Env env);

  const ManagerOptions options;
  // Set by Manager::Create before anything runs; outlives env (its network
  // is wrapped by it).
  std::unique_ptr<VmMetrics> metrics;
  Env env;
  const std::string vms_dir;     // <state>/vms: one directory per VM
  const std::string drives_dir;  // <state>/drives: where every VM sees its drives
  std::unique_ptr<storage::SnapshotStore> store;
  EventLog events;
  Registry registry;
  Operations operations;
  // Clone fan-out; the leaf executor copies disks and handles process exits
  // (its tasks never wait for other tasks).
  std::unique_ptr<Executor> clone_executor;
  std::unique_ptr<Executor> leaf_executor;
  std::unique_ptr<Supervisor> supervisor;
  std::unique_ptr<WarmPool> warm;
  // Jailed VMs' uids (null when VMs are not jailed). A VM holds its lease
  // (owner = VM id) from its creation until its process is gone.
  std::unique_ptr<firecracker::UidPool> uids;

  // This host as snapshots record it (compat.cc), probed once.
  absl::Mutex host_mu;
  std::optional<firecracker::SnapshotHost> host ABSL_GUARDED_BY(host_mu);

  // Why the page server ended a clone's session, until its exit is handled.
  absl::Mutex pager_mu;
  std::map<std::string, std::string> pager_errors ABSL_GUARDED_BY(pager_mu);

  // ---- shared steps ----
  absl::Status RequireVmms() const;
  bool jailed() const { return env.vmms != nullptr && env.vmms->jailed(); }
  // How VM `id` is started (drive bind mounts, or its jail with `limits`).
  // Jailed: leases the VM's uid (ResourceExhausted when none is left).
  // Unjailed, a VM known to have no drives (`has_drives` false: not a pooled
  // process, whose VM is not known yet) gets no mount namespace.
  absl::StatusOr<LaunchSpec> LaunchSpecFor(const std::string& id, const std::string& dir,
                                           const firecracker::CgroupLimits& limits,
                                           bool has_drives = true) const;
  // Whether a VM's directory gets a drives/ directory: unjailed VMs with
  // drives (pooled processes always get one: warm_pool.cc).
  bool NeedsDrivesDir(const VmConfig& config) const { return !jailed() && !config.drives.empty(); }
  // Where Firecracker sees a VM's drive: "/drives/<id>" in its jail, else
  // "<state>/drives/<id>" in its mount namespace.
  std::string DrivePath(const std::string& drive_id) const;
  std::vector<firecracker::Drive> FirecrackerDrives(const VmConfig& config) const;
  // Ends VM `id`'s uid lease and removes what is left of its jail (its
  // process is gone). No-op when not jailed.
  void ReleaseJail(const std::string& id);
  // Watches the VM's process; its exit is handled by HandleExit.
  void Watch(const std::shared_ptr<VmEntry>& entry);
  void Unwatch(VmEntry& entry);
  // Kills the VM's process and releases its page-server session and network
  // (its directory stays). Holds entry.op.
  void ReleaseResources(VmEntry& entry);
  void OnPagerEvent(const uffd::SessionEvent& event);
  // ---- snapshot compatibility (compat.cc) ----
  // This host and its Firecracker, as a snapshot records them.
  absl::StatusOr<firecracker::SnapshotHost> ThisHost();
  // OK when the snapshot (its record, and its vmstate's format header) can
  // be restored here; FailedPrecondition naming every difference otherwise.
  absl::Status CheckRestorable(const storage::SnapshotRecord& record, const std::string& dir);
  void Publish(Event event) { events.Publish(std::move(event)); }
};

// ---- operations (one file each) ----

absl::StatusOr<VmInfo> RunVm(Core& core, const RunRequest& request, const CancelToken& cancel);
absl::StatusOr<CloneResult> CloneVms(Core& core, const CloneRequest& request, const CancelToken& cancel);

absl::StatusOr<VmInfo> SetPaused(Core& core, const std::string& ref, bool paused);
absl::StatusOr<DeleteResult> DeleteVm(Core& core, const std::shared_ptr<VmEntry>& entry, bool force,
                                      absl::Duration grace);
void HandleExit(Core& core, const std::string& vm_id, uint64_t watch);

// ---- metadata (MMDS, metadata.cc) ----
// The VM's MMDS document: the caller's object plus fcvm's keys under
// kMetadataNamespace. InvalidArgument as ValidateMetadata, or when the whole
// exceeds kMaxMetadataBytes.
absl::StatusOr<std::string> ComposeMetadata(const VmInfo& info, absl::string_view user_json,
                                            std::optional<uint32_t> clone_index);
absl::StatusOr<std::string> GetMetadata(Core& core, const std::string& ref);
absl::StatusOr<std::string> SetMetadata(Core& core, const std::string& ref, const std::string& user_json);

// One snapshot of a running or paused VM, under its operation lock: pause,
// Firecracker writes vmstate + memory (Full, or with parent_id a Diff: the
// pages written since the VM's memory base, a layer over parent_id), private
// drives copied, resume (unless !resume), commit. The VM's memory base
// becomes the new snapshot (cleared first: a failure leaves it unknown).
struct SnapshotTake {
  std::string id;
  std::string name;
  Labels labels;
  std::string parent_id;  // set: a Diff snapshot over this one
  bool resume = true;
};
struct TakenSnapshot {
  storage::SnapshotRecord record;
  absl::Duration took;   // pause -> files written and drives copied
  absl::Duration pause;  // paused -> resumed (zero: was paused, or stays paused)
};
absl::StatusOr<TakenSnapshot> TakeSnapshot(Core& core, VmEntry& entry, const SnapshotTake& take,
                                           const CancelToken& cancel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(entry.op);
absl::StatusOr<SnapshotInfo> CreateSnapshot(Core& core, const SnapshotRequest& request,
                                            const CancelToken& cancel);
// An unjailed VM's Diff snapshot is staged in kStagingDir, in a directory
// "fcvm-stage-<fcvmd pid>-<snapshot id>". RemoveStaleStaging removes those
// of fcvmds that are gone (a crash mid-fork), at start-up.
inline constexpr char kStagingDir[] = "/dev/shm";
inline constexpr char kStagingPrefix[] = "fcvm-stage-";
void RemoveStaleStaging(const std::string& dir = kStagingDir);
// Live fork (fork.cc).
absl::StatusOr<ForkResult> ForkVm(Core& core, const ForkRequest& request, const CancelToken& cancel);
// Merges a layered snapshot's memory into one whole file (in the
// background after a fork deepens a chain past kCompactLayers; at once when a
// fork would go past kMaxLayers). Clones keep working throughout.
absl::Status CompactSnapshot(Core& core, const std::string& snapshot_id, const CancelToken& cancel);
inline constexpr uint32_t kCompactLayers = 4;
inline constexpr uint32_t kMaxLayers = 8;
SnapshotInfo DescribeSnapshot(Core& core, const storage::SnapshotRecord& record);
absl::StatusOr<DeleteSnapshotResult> DeleteSnapshot(Core& core, const std::string& ref, bool force);

void Reconcile(Core& core);
// A UFFD clone's memory files as the page server sees them, every layer
// (clone.cc). FailedPrecondition when a layer is missing.
absl::StatusOr<uffd::SnapshotFiles> SnapshotPagerFiles(const storage::SnapshotStore& store,
                                                       const storage::SnapshotRecord& record);
// Where a UFFD clone's page-server session keeps its handshake, so that the
// next fcvmd can take the clone over (reconcile.cc).
std::string HandshakeCopyPath(const std::string& vm_dir);
// On the manager's destruction: what happens to each VM (see manager.h).
void LeaveVms(Core& core);

}  // namespace fcvm::vm
