#include "lib/vm/provision.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

absl::Status CheckMemory(Core& core, uint64_t mib, uint32_t count) {
  absl::StatusOr<uint64_t> avail = core.env.host->MemAvailableMib();
  if (!avail.ok()) return absl::OkStatus();  // cannot tell: let the kernel decide
  uint64_t need = mib * count;
  if (need > *avail) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory: ", count, " x ", mib, " MiB wanted, ", *avail, " MiB available"));
  }
  return absl::OkStatus();
}

absl::Status CheckGuestMemory(Core& core, const VmConfig& config, uint32_t count) {
  if (config.huge_pages == HugePages::kNone) return CheckMemory(core, config.memory_mib, count);
  // Huge pages come from the pool, not from MemAvailable (which does not
  // count the pool). Firecracker maps them MAP_NORESERVE: nothing is taken
  // at start, every page when first touched (for clones: installed by the
  // page server), so a pool that runs dry later kills the clone that
  // faulted (docs/operations.md). This check counts whole guests.
  const uint64_t page_size = GuestPageSize(config.huge_pages);
  absl::StatusOr<HugePagePool> pool = core.env.host->HugePagePoolOf(page_size);
  if (absl::IsNotFound(pool.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("huge pages ", HugePagesName(config.huge_pages), ": ", pool.status().message()));
  }
  if (!pool.ok()) {
    spdlog::warn("cannot read the huge page pool, not checking it: {}", pool.status());
    return absl::OkStatus();
  }
  const uint64_t per_vm = ((uint64_t{config.memory_mib} << 20) + page_size - 1) / page_size;
  const uint64_t need = per_vm * count;
  if (need > pool->available()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "not enough huge pages: ", count, " x ", config.memory_mib, " MiB need ", need, " pages of ",
        page_size >> 10, " KiB, the host's pool has ", pool->available(), " available (", pool->free,
        " free, ", pool->reserved, " of them reserved, ", pool->total, " in all",
        pool->overcommit > 0
            ? absl::StrCat(", overcommit ", pool->overcommit, " with ", pool->surplus, " in use")
            : "",
        "); add pages with sysctl vm.nr_hugepages (docs/operations.md, \"Huge pages\")"));
  }
  return absl::OkStatus();
}

absl::Status CheckDiskForCopies(Core& core, const VmConfig& config, const DriveSource& source, uint32_t count,
                                absl::string_view what) {
  if (core.env.host->reflinks()) return absl::OkStatus();
  uint64_t need = 0;
  for (const DriveConfig& d : config.drives) {
    if (d.read_only) continue;
    absl::StatusOr<uint64_t> bytes = core.env.host->AllocatedBytes(source(d));
    if (bytes.ok()) need += *bytes;  // a missing file is reported by the copy, naming it
  }
  if (need == 0) return absl::OkStatus();
  return core.env.host->CheckFreeSpace(core.vms_dir, need * count, what);
}

// ---- Creation ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Creation>> Creation::Begin(Core& core, VmInfo info,
                                                          Registry::Reservation* names, bool may_use_pool) {
  std::optional<WarmPool::Process> warm;
  if (may_use_pool && core.warm != nullptr) warm = core.warm->Take();
  auto entry = std::make_shared<VmEntry>();
  if (warm.has_value()) {
    info.id = warm->id;
    entry->dir = warm->dir;
    entry->vmm = std::move(warm->vmm);
    info.timings.from_warm_pool = true;
  } else {
    info.id = NewId("vm");
    entry->dir = core.vms_dir + "/" + info.id;
    if (absl::Status st = MakeDirs(entry->dir + "/drives", 0700); !st.ok()) {
      (void)RemoveTree(entry->dir);
      return Annotate(st, "vm directory");
    }
  }
  Registry::Reservation own;
  if (names == nullptr) {
    info.name = info.id;
    absl::StatusOr<Registry::Reservation> reserved = core.registry.ReserveName(info.id);
    if (!reserved.ok()) {
      if (entry->vmm != nullptr) (void)entry->vmm->Kill();
      (void)RemoveTree(entry->dir);
      return reserved.status();
    }
    own = *std::move(reserved);
    names = &own;
  }
  info.state = VmState::kCreating;
  info.created_at = absl::Now();
  info.console_log_path = entry->dir + "/console.log";
  std::string id = info.id;
  entry->info = std::move(info);
  entry->op.Lock();
  // Listed (as creating) from now on, but recorded only once it runs: until
  // then its directory is its intent. A restarted fcvmd kills any Firecracker
  // running from a VM directory without a record of a VM that ran
  // (reconcile.cc), and removes the directory. Writing a record here too
  // cost 1-7 ms per clone with 4 clones made at once on the test host (file
  // system operations under load), about 15% of a 32-clone request.
  if (absl::Status st = core.registry.Insert(entry, *names, /*write_record=*/false); !st.ok()) {
    if (entry->vmm != nullptr) (void)entry->vmm->Kill();
    entry->vmm.reset();
    entry->op.Unlock();
    (void)RemoveTree(entry->dir);
    return Annotate(st, absl::StrCat("create vm ", id));
  }
  return std::unique_ptr<Creation>(new Creation(core, std::move(entry), std::move(id)));
}

Creation::~Creation() {
  if (committed_) return;
  VmEntry& e = *entry_;
  core_.ReleaseResources(e);
  e.deleting = true;  // an operation waiting for this VM's lock finds it gone
  std::string why = error_.ToString();
  (void)core_.registry.Transition(e, VmState::kFailed, "fail", why);
  core_.registry.Remove(id_);
  (void)RemoveTree(e.dir);
  e.op.Unlock();
}

absl::Status Creation::SetupNetwork(const std::vector<PortMapping>& publish) {
  absl::Time t = absl::Now();
  ASSIGN_OR_RETURN(VmNetworkInfo net, core_.env.network->Setup(id_, publish));
  netns_ = std::move(net.netns);
  absl::Duration took = absl::Now() - t;
  core_.registry.Update(*entry_, [&](VmInfo& v) {
    v.network.netns = net.netns_name;
    v.network.tap = net.tap;
    v.network.guest_ip = net.guest_ip;
    v.network.host_ip = net.host_ip;
    v.network.guest_mac = v.config.network.guest_mac;
    v.network.publish = publish;
    v.timings.network = took;
  });
  // Not recorded yet: a restarted fcvmd removes the networks of VMs that are
  // not running (NetworkService::ReconcileOrphans finds them by name).
  return absl::OkStatus();
}

absl::Status Creation::PrepareDrives(const VmConfig& config, const DriveSource& source,
                                     const CancelToken& cancel) {
  std::string dir = entry_->dir + "/drives";
  for (const DriveConfig& d : config.drives) {
    RETURN_IF_ERROR(cancel.Check());
    std::string dst = dir + "/" + d.drive_id;
    if (d.read_only) {
      // Read-only drives are shared: a link to the image.
      if (symlink(d.path.c_str(), dst.c_str()) < 0) return ErrnoError(absl::StrCat("symlink ", dst));
      continue;
    }
    RETURN_IF_ERROR(
        Annotate(core_.env.host->CopyDisk(source(d), dst, cancel), absl::StrCat("drive ", d.drive_id)));
  }
  return absl::OkStatus();
}

absl::Status Creation::AttachProcessAndDrives(const VmConfig& config, const DriveSource& source,
                                              const CancelToken& cancel) {
  VmEntry& e = *entry_;
  absl::Status drives;
  absl::Duration disks;
  if (e.vmm != nullptr) {
    absl::Time t = absl::Now();
    drives = PrepareDrives(config, source, cancel);
    disks = absl::Now() - t;
  } else {
    // Copy the drives on the leaf executor while Firecracker starts here.
    TaskGroup copy;
    copy.Run(*core_.leaf_executor, [&] {
      absl::Time t = absl::Now();
      drives = PrepareDrives(config, source, cancel);
      disks = absl::Now() - t;
    });
    LaunchSpec spec = core_.LaunchSpecFor(id_, e.dir);
    spec.netns_fd = netns_ ? netns_.get() : -1;
    spec.cancel = cancel;
    absl::StatusOr<std::unique_ptr<Vmm>> launched = core_.env.vmms->Launch(spec);
    copy.Wait();
    if (!launched.ok()) return launched.status();
    e.vmm = *std::move(launched);
  }
  absl::Duration ready = e.vmm->startup_time();
  pid_t pid = e.vmm->pid();
  std::string console = e.vmm->console_log_path();
  core_.registry.Update(e, [&](VmInfo& v) {
    v.pid = pid;
    v.console_log_path = console;
    v.timings.disks = disks;
    if (!v.timings.from_warm_pool) v.timings.process_ready = ready;
  });
  // Watched from now on, so that arming the watch (a wake-up of the
  // supervisor's thread) happens while Firecracker loads, not after: an exit
  // seen before Commit waits for this creation's lock, then finds the VM
  // deleting (undone) or running (and handles it as any exit).
  core_.Watch(entry_);
  // Not recorded yet (the record written at Begin names the VM's directory):
  // a restarted fcvmd finds the process by its API socket in that directory
  // (VmmFactory::FindRunning) and kills it, the VM never having run.
  return drives;
}

void Creation::SetTimings(const std::function<void(VmTimings&)>& change) {
  core_.registry.Update(*entry_, [&](VmInfo& v) { change(v.timings); });
}

absl::StatusOr<VmInfo> Creation::Commit(VmState state, const std::string& message) {
  absl::Time created_at = core_.registry.Info(*entry_).created_at;
  core_.registry.Update(*entry_, [&](VmInfo& v) { v.timings.total = absl::Now() - created_at; });
  RETURN_IF_ERROR(core_.registry.Transition(*entry_, state, "create", message));
  committed_ = true;
  VmInfo info = core_.registry.Info(*entry_);
  entry_->op.Unlock();
  return info;
}

}  // namespace fcvm::vm
