#pragma once

// The VM manager: every VM's lifecycle, the snapshot store, clones, and the
// page server they use. fcvmd's services are thin wrappers around it. This
// class is a facade; the work lives in one file per job (see core.h), and
// docs/architecture.md follows a clone through them.
//
// Blocking: every method except List*/Get*/Subscribe/PageServerStats blocks
// for the duration of the operation (spawning Firecracker, API calls, disk
// copies). The daemon calls them from its own worker threads, never from
// gRPC threads. Operations on one VM are serialised (one at a time per VM);
// operations on different VMs run in parallel.
//
// Cancellation: the long operations take a CancelToken. A cancelled token
// (the client went away, its deadline passed) stops the work at the next step
// and undoes what it made: Run leaves no VM, Clone starts no more clones and
// deletes those it made, a disk copy stops within 16 MiB. The destructor
// cancels every operation in flight with Unavailable "fcvmd is shutting
// down" and waits for them.
//
// Persistence: each VM's record (config, pid, state, clone source) lives in
// <state>/vms/<id>/vm.json, written once the VM first runs and at each
// change; a record that cannot be written fails the request that needed it.
// The VM's directory exists before its process starts; on Create, the
// manager reconciles what a previous fcvmd left, killing any Firecracker
// that runs from a directory without a record.
//
// Drive paths: a snapshot bakes in the paths of its VM's drives and
// Firecracker cannot override them at load. Every VM therefore runs in its
// own mount namespace in which its private directory <state>/vms/<id>/drives
// is bind-mounted over the fixed <state>/drives; its drives are always
// "<state>/drives/<drive_id>", and each clone sees its own copies there.
//
// Errors follow house style: InvalidArgument for bad requests (validate.h
// has the bounds), NotFound for unknown refs, AlreadyExists for a taken name,
// FailedPrecondition for the wrong state, ResourceExhausted for memory/disk,
// Unavailable when Firecracker is not configured or fcvmd is stopping,
// Cancelled/DeadlineExceeded for a cancelled call.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/cancel.h"
#include "lib/uffd/page_server.h"
#include "lib/vm/manager_options.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

struct Core;
struct Env;

class Manager {
 public:
  // With the real world (lib/firecracker, lib/uffd, lib/net, lib/storage).
  static absl::StatusOr<std::unique_ptr<Manager>> Create(const ManagerOptions& options);
  // With a given Env (tests: fakes).
  static absl::StatusOr<std::unique_ptr<Manager>> Create(const ManagerOptions& options, Env env);
  // Cancels and waits for the operations in flight. Then: clones served by
  // the page server are stopped (nobody could serve their faults) and so are
  // VMs running in a warm-pool process (it dies with fcvmd); every other VM
  // is left running for the next fcvmd to re-adopt.
  ~Manager();

  absl::StatusOr<VmInfo> Run(const RunRequest& request, const CancelToken& cancel = {});
  absl::StatusOr<VmInfo> Get(const std::string& ref) const;
  std::vector<VmInfo> List(const ListFilter& filter) const;
  absl::StatusOr<VmInfo> Pause(const std::string& ref);
  absl::StatusOr<VmInfo> Resume(const std::string& ref);
  // Graceful: SIGTERM, wait `grace`, then SIGKILL. force: SIGKILL at once.
  absl::StatusOr<DeleteResult> Delete(const std::string& ref, bool force, absl::Duration grace);

  absl::StatusOr<SnapshotInfo> CreateSnapshot(const SnapshotRequest& request, const CancelToken& cancel = {});
  absl::StatusOr<SnapshotInfo> GetSnapshot(const std::string& ref) const;
  std::vector<SnapshotInfo> ListSnapshots(const Labels& label_selector) const;
  // FailedPrecondition while a clone request uses the snapshot, or while it
  // has clones (unless `force`, which deletes them).
  absl::StatusOr<DeleteSnapshotResult> DeleteSnapshot(const std::string& ref, bool force);

  absl::StatusOr<CloneResult> Clone(const CloneRequest& request, const CancelToken& cancel = {});
  // Live fork (fork.cc): clones of a running or paused VM as it is now.
  absl::StatusOr<ForkResult> Fork(const ForkRequest& request, const CancelToken& cancel = {});

  // A VM's metadata (MMDS) as its Firecracker holds it; SetMetadata replaces
  // the caller's keys (a JSON object, see ValidateMetadata) and keeps fcvm's,
  // returning the new document. FailedPrecondition unless running or paused.
  absl::StatusOr<std::string> GetMetadata(const std::string& ref);
  absl::StatusOr<std::string> SetMetadata(const std::string& ref, const std::string& user_json);

  // The page server's counters.
  uffd::ServerStats PageServerStats() const;

  // What the Firecracker of each VM in `ids` uses now (vm_usage.h), by id;
  // VMs without a running process (creating, stopped, failed) and unknown
  // ids are left out. With `pss`, also each one's PSS, which costs a walk
  // of its page tables (see docs/operations.md for the numbers). Reads
  // /proc; takes no VM's operation lock.
  std::map<std::string, VmUsage> Usage(const std::vector<std::string>& ids, bool pss) const;

  // Lifecycle events, numbered from 1. The callback runs on the thread that
  // caused the event with the event log's lock held: keep it quick and do not
  // call the manager from it. With `replay_after`, the kept events numbered
  // above it come first (0: all kept ones, e.g. start-up reconcile's).
  // Returns a token for Unsubscribe.
  uint64_t Subscribe(std::function<void(const Event&)> callback,
                     std::optional<uint64_t> replay_after = std::nullopt);
  void Unsubscribe(uint64_t token);

  const ManagerOptions& options() const;
  // Version of the configured Firecracker ("1.14.2"), empty if none.
  std::string firecracker_version() const;
  // "jailer 1.7.0" when VMs run under the jailer, else "none".
  std::string isolation() const;
  // Ready warm-pool processes, and takes that found none.
  size_t warm_pool_ready() const;
  uint64_t warm_pool_misses() const;

 private:
  explicit Manager(std::unique_ptr<Core> core);
  std::unique_ptr<Core> core_;
};

}  // namespace fcvm::vm
