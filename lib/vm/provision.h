#pragma once

// Provisioning (internal to lib/vm): the checks made before a VM is created,
// and the steps every new VM goes through, booted or cloned, wrapped in a
// Creation that undoes them unless the VM reaches its first running state.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/vm/core.h"

namespace fcvm::vm {

// Where a VM's writable drive is copied from (the image, or the snapshot's
// copy).
using DriveSource = std::function<std::string(const DriveConfig&)>;

// ResourceExhausted when `count` VMs of `mib` MiB do not fit in the host's
// available memory (OK when it cannot tell).
absl::Status CheckMemory(Core& core, uint64_t mib, uint32_t count);
// ResourceExhausted, up front, when `count` VMs' private disk copies would
// not fit in the state directory (nothing is needed where copies reflink).
absl::Status CheckDiskForCopies(Core& core, const VmConfig& config, const DriveSource& source, uint32_t count,
                                absl::string_view what);

// A VM from its directory to its first running (or paused) state. From
// Begin the VM is in the registry as kCreating with its operation lock held
// (its directory, made before any process starts, is its intent: see
// reconcile.cc); Commit makes it kRunning/kPaused, writes its record (a
// record that cannot be written fails the creation) and lets go of the lock. A Creation destroyed without Commit undoes
// everything (process, page-server session, network, directory, registry
// entry) and publishes the VM's failure with the error given to Fail.
class Creation {
 public:
  // `info` has everything but the id (assigned here). `names` holds its
  // name; null names the VM after its id. With `may_use_pool`, a warm-pool
  // process is taken when one is ready (its id becomes the VM's).
  static absl::StatusOr<std::unique_ptr<Creation>> Begin(Core& core, VmInfo info,
                                                         Registry::Reservation* names, bool may_use_pool);
  ~Creation();
  Creation(const Creation&) = delete;
  Creation& operator=(const Creation&) = delete;

  const std::string& id() const { return id_; }
  VmEntry& entry() { return *entry_; }
  Vmm& vmm() { return *entry_->vmm; }

  // The VM's network namespace, tap and addresses.
  absl::Status SetupNetwork(const std::vector<PortMapping>& publish);
  // Gives the VM a Firecracker and its drives: the pooled process, or a new
  // one (inside the VM's network namespace, if any) launched while the drives
  // are copied; the supervisor watches the process from here on.
  absl::Status AttachProcessAndDrives(const VmConfig& config, const DriveSource& source,
                                      const CancelToken& cancel);
  void SetTimings(const std::function<void(VmTimings&)>& change);

  // The VM reached `state`: record and event (with `message`).
  absl::StatusOr<VmInfo> Commit(VmState state, const std::string& message);
  // Why the creation failed, for the undo's event and record.
  void Fail(const absl::Status& status) { error_ = status; }

 private:
  Creation(Core& core, std::shared_ptr<VmEntry> entry, std::string id)
      : core_(core), entry_(std::move(entry)), id_(std::move(id)) {}
  absl::Status PrepareDrives(const VmConfig& config, const DriveSource& source, const CancelToken& cancel);

  Core& core_;
  std::shared_ptr<VmEntry> entry_;
  std::string id_;
  UniqueFd netns_;
  bool committed_ = false;
  absl::Status error_ = absl::UnknownError("creation did not finish");
};

}  // namespace fcvm::vm
