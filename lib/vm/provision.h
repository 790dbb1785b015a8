#pragma once

// Provisioning (internal to lib/vm): the checks made before a VM is created,
// and the steps every new VM goes through, booted or cloned, wrapped in a
// Creation that undoes them unless the VM reaches its first running state.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/vm/core.h"
#include "lib/vm/validate.h"

namespace fcvm::vm {

// Where a VM's writable drive is copied from (the image, or the snapshot's
// copy).
using DriveSource = std::function<std::string(const DriveConfig&)>;

// What a new VM's Firecracker opens besides its drives.
struct VmFiles {
  // Files it only reads (kernel, initrd, a File clone's memory file): used
  // where they are, or hard-linked (before the launch, else bind-mounted)
  // into a jail at their jail path.
  std::vector<firecracker::JailFile> shared;
  // Files copied for it alone into its jail (a snapshot's vmstate): host
  // source -> jail path. An unjailed VM reads the source itself.
  std::vector<std::pair<std::string, std::string>> copies;
};

// ResourceExhausted when `count` VMs of `mib` MiB do not fit in the host's
// available memory (OK when it cannot tell).
absl::Status CheckMemory(Core& core, uint64_t mib, uint32_t count);
// The guest memory of `count` VMs of `config`: MemAvailable (CheckMemory),
// or for huge-page guests the host's pool of that page size:
// ResourceExhausted with the pages needed (count x memory: a clone may come
// to touch all of its memory) and what the pool has; FailedPrecondition
// when the host has no pool of that size. OK when it cannot tell.
absl::Status CheckGuestMemory(Core& core, const VmConfig& config, uint32_t count);
// ResourceExhausted, up front, when `count` VMs' private disk copies would
// not fit in the state directory (nothing is needed where copies reflink).
absl::Status CheckDiskForCopies(Core& core, const VmConfig& config, const DriveSource& source, uint32_t count,
                                absl::string_view what);

// The cgroup limits of a VM with `config` under `limits` (0 = the default:
// memory = guest + 32 MiB, CPU = 100% per vCPU, pids = what Firecracker needs
// with a margin). InvalidArgument when a limit is below what the guest needs
// or out of range.
// FailedPrecondition for limits asked of an fcvmd that does not jail its VMs
// (nothing would enforce them); OK for none.
absl::Status CheckLimitsEnforceable(const Core& core, const ResourceLimits& limits);

absl::StatusOr<firecracker::CgroupLimits> CgroupLimitsFor(const VmConfig& config,
                                                          const ResourceLimits& limits);
// The inverse, for reporting the limits in force.
ResourceLimits ResourceLimitsOf(const firecracker::CgroupLimits& limits);

// A VM from its directory to its first running (or paused) state. From
// Begin the VM is in the registry as kCreating with its operation lock held
// (its directory, made before any process starts, is its intent: see
// reconcile.cc); Commit makes it kRunning/kPaused, writes its record (a
// record that cannot be written fails the creation) and lets go of the lock.
// A Creation destroyed without Commit undoes everything (process, jail,
// page-server session, network, directory, registry entry) and publishes the
// VM's failure with the error given to Fail.
class Creation {
 public:
  // `info` has everything but the id (assigned here). `names` holds its
  // name; null names the VM after its id. With `may_use_pool`, a warm-pool
  // process is taken when one is ready (its id becomes the VM's). Jailed, the
  // VM's uid is leased here (ResourceExhausted when none is left).
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
  // Gives the VM a Firecracker, its drives and `files`: the pooled process,
  // or a new one (inside the VM's network namespace, if any; jailed with
  // `limits` when VMs are jailed) launched while the drives are copied; the
  // supervisor watches the process from here on.
  absl::Status AttachProcessAndDrives(const VmConfig& config, const DriveSource& source, const VmFiles& files,
                                      const firecracker::CgroupLimits& limits, const CancelToken& cancel);
  // The path Firecracker is given for a file: its jail path when jailed,
  // else its host path.
  std::string VmmPath(const std::string& jail_path, const std::string& host_path) const {
    return jail_.has_value() ? jail_path : host_path;
  }
  // Where a jail path is on the host; `jail_path` itself when not jailed.
  std::string HostPath(const std::string& jail_path) const {
    return jail_.has_value() ? jail_->chroot_dir + jail_path : jail_path;
  }
  bool jailed() const { return jail_.has_value(); }
  void SetTimings(const std::function<void(VmTimings&)>& change);

  // The VM reached `state`: record and event (with `message`).
  absl::StatusOr<VmInfo> Commit(VmState state, const std::string& message);
  // Why the creation failed, for the undo's event and record.
  void Fail(const absl::Status& status) { error_ = status; }

 private:
  Creation(Core& core, std::shared_ptr<VmEntry> entry, std::string id)
      : core_(core), entry_(std::move(entry)), id_(std::move(id)) {}
  absl::Status PrepareDrives(const VmConfig& config, const DriveSource& source, const VmFiles& files,
                             const CancelToken& cancel);
  absl::Status Launch(const VmFiles& files, const VmConfig& config, const firecracker::CgroupLimits& limits,
                      const CancelToken& cancel);
  absl::Status FillJailed(const VmFiles& files, const VmConfig& config,
                          const firecracker::CgroupLimits& limits);

  Core& core_;
  std::shared_ptr<VmEntry> entry_;
  std::string id_;
  UniqueFd netns_;
  std::string netns_name_;
  // Jailed: the VM's uid (= gid) and jail.
  uint32_t uid_ = 0;
  std::optional<firecracker::JailPaths> jail_;
  bool committed_ = false;
  absl::Status error_ = absl::UnknownError("creation did not finish");
};

// The host path of the VM's vsock socket: Firecracker is given the relative
// kVsockSocketName (kept as is in a snapshot), which it binds in its working
// directory: the VM's directory, or the root of its chroot when jailed. So
// every clone of a snapshot has its own.
inline std::string VsockHostPath(Creation& vm) {
  return vm.jailed() ? vm.HostPath(std::string("/") + kVsockSocketName)
                     : vm.entry().dir + "/" + kVsockSocketName;
}

}  // namespace fcvm::vm
