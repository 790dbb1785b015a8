#pragma once

// The registry: every VM this fcvmd knows (from creation to deletion), their
// names, their records on disk, and which snapshots requests in flight use.
//
// Names are unique among the registry's VMs (whatever their state: a stopped
// VM keeps its name until it is deleted) and the names that requests in
// flight have reserved. A request reserves all its names at once, under one
// lock, before any work starts; so concurrent requests never get the same
// name, and a failed request releases exactly the names it reserved. Clone
// names are "<prefix>-<n>" with n counting on from the highest index in use
// or reserved, so the gaps deleted clones leave are not refilled (a name is
// not handed to a new VM while the highest one is alive).
//
// State: every change of a VM's state goes through Transition, which checks
// it against the state table, writes the VM's record and publishes the event.
//
// Thread-safety: all methods are thread-safe. A VmEntry's `info` is read and
// written under the registry's lock (Info/Update); its other fields belong to
// whoever holds the entry's `op` lock (one operation per VM at a time).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/uffd/page_server.h"
#include "lib/vm/env.h"
#include "lib/vm/events.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

struct VmEntry {
  absl::Mutex op;  // serialises operations on this VM
  VmInfo info;     // under Registry's lock (Registry::Info / Update)
  std::string dir;
  std::unique_ptr<Vmm> vmm;                  // under `op`
  std::optional<uffd::ListenerId> listener;  // under `op`
  uint64_t watch = 0;                        // under `op`: the supervisor's watch of its process
  bool deleting = false;                     // under `op`
};

class Registry {
 public:
  Registry(std::string vms_dir, Host* host, EventLog* events)
      : vms_dir_(std::move(vms_dir)), host_(host), events_(events) {}

  // ---- names ----
  // Names reserved by one request; released (those not yet given to a VM)
  // when destroyed.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    ~Reservation();
    const std::vector<std::string>& names() const { return names_; }

   private:
    friend class Registry;
    Registry* registry_ = nullptr;
    uint64_t id_ = 0;
    std::vector<std::string> names_;
  };
  // AlreadyExists when a VM has the name or a request in flight reserved it.
  absl::StatusOr<Reservation> ReserveName(const std::string& name);
  // "<prefix>-<n>" .. "<prefix>-<n+count-1>", n after the highest in use.
  absl::StatusOr<Reservation> ReserveCloneNames(const std::string& prefix, uint32_t count);

  // ---- VMs ----
  // Adds a VM whose name `reservation` holds, writing its record first when
  // `write_record` (a VM being created is recorded when it first runs); on
  // error nothing is added.
  absl::Status Insert(const std::shared_ptr<VmEntry>& entry, Reservation& reservation,
                      bool write_record = true);
  // Forgets a VM (its record file goes with its directory, the caller's).
  void Remove(const std::string& id);
  // By id or name. NotFound "vm 'x' not found".
  absl::StatusOr<std::shared_ptr<VmEntry>> Find(const std::string& ref) const;
  std::vector<std::shared_ptr<VmEntry>> All() const;
  // Consistent copies, sorted by creation time, filtered.
  std::vector<VmInfo> List(const Labels& selector, const std::vector<VmState>& states,
                           const std::string& snapshot_id) const;
  VmInfo Info(const VmEntry& entry) const;
  // How many VMs are in each state (every state present, 0 when none).
  std::map<VmState, size_t> CountByState() const;
  // Changes `entry.info` under the lock (not its state: that is Transition's).
  void Update(VmEntry& entry, const std::function<void(VmInfo&)>& change);

  // Moves the VM to `to` if the table allows it (FailedPrecondition "vm x is
  // <from>; cannot <verb>" otherwise), writes its record and publishes a
  // kVmState event with `message`. Entering kStopped or kFailed sets the
  // VM's error to `message`; entering kRunning, kPaused or kCreating clears
  // it. An error writing the record is returned (the state has changed).
  absl::Status Transition(VmEntry& entry, VmState to, absl::string_view verb,
                          const std::string& message = "");
  // Writes the VM's record as it is now.
  absl::Status Persist(const VmEntry& entry);
  std::string RecordPath(const std::string& vm_dir) const { return vm_dir + "/vm.json"; }

  // ---- snapshots in use ----
  // Held by a clone request for its whole run: the snapshot cannot be deleted
  // meanwhile.
  class SnapshotUse {
   public:
    SnapshotUse() = default;
    SnapshotUse(SnapshotUse&& other) noexcept { *this = std::move(other); }
    SnapshotUse& operator=(SnapshotUse&& other) noexcept;
    ~SnapshotUse();

   private:
    friend class Registry;
    Registry* registry_ = nullptr;
    std::string id_;
    bool deleting_ = false;  // a deletion guard rather than a use
  };
  // NotFound while the snapshot is being deleted.
  absl::StatusOr<SnapshotUse> UseSnapshot(const std::string& snapshot_id);
  // FailedPrecondition while clone requests use it (or another deletion runs).
  absl::StatusOr<SnapshotUse> BeginSnapshotDeletion(const std::string& snapshot_id, const std::string& name);
  // VMs cloned from the snapshot, and how many of them are alive.
  std::vector<std::shared_ptr<VmEntry>> ClonesOf(const std::string& snapshot_id) const;
  uint32_t LiveCloneCount(const std::string& snapshot_id) const;

 private:
  void Release(uint64_t reservation, const std::vector<std::string>& names);
  void EndUse(const std::string& id, bool deleting);
  bool NameTakenLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string vms_dir_;
  Host* const host_;
  EventLog* const events_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<VmEntry>> vms_ ABSL_GUARDED_BY(mu_);  // by id
  absl::flat_hash_map<std::string, std::string> names_ ABSL_GUARDED_BY(mu_);  // name -> id
  absl::flat_hash_map<std::string, uint64_t> reserved_ ABSL_GUARDED_BY(mu_);  // name -> reservation
  uint64_t next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, int> snapshot_users_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> snapshots_deleting_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::vm
