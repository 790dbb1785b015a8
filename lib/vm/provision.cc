#include "lib/vm/provision.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {
namespace {

constexpr uint64_t kCpuPeriodUs = 100000;
constexpr uint32_t kMaxCpuPercent = 100 * 1024;

std::string DirOf(const std::string& path) { return path.substr(0, path.rfind('/')); }

}  // namespace

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

absl::Status CheckLimitsEnforceable(const Core& core, const ResourceLimits& limits) {
  if (core.jailed()) return absl::OkStatus();
  if (limits.memory_mib == 0 && limits.cpu_percent == 0 && limits.cpu_weight == 0 && limits.pids_max == 0) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      "resource limits need jailed VMs, and this fcvmd runs Firecracker without the jailer (--no-jailer)");
}

absl::StatusOr<firecracker::CgroupLimits> CgroupLimitsFor(const VmConfig& config,
                                                          const ResourceLimits& limits) {
  firecracker::CgroupLimits c;
  c.memory_bytes = limits.memory_mib > 0 ? uint64_t{limits.memory_mib} << 20
                                         : firecracker::MinMemoryBytes(config.memory_mib);
  uint32_t percent = limits.cpu_percent > 0 ? limits.cpu_percent : 100 * config.vcpu_count;
  if (percent > kMaxCpuPercent) {
    return absl::InvalidArgumentError(
        absl::StrCat("limits.cpu_percent must be 1-", kMaxCpuPercent, ", got ", limits.cpu_percent));
  }
  c.cpu_period_us = kCpuPeriodUs;
  c.cpu_quota_us = uint64_t{percent} * kCpuPeriodUs / 100;
  if (limits.cpu_weight > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("limits.cpu_weight must be 1-10000, got ", limits.cpu_weight));
  }
  c.cpu_weight = limits.cpu_weight;
  c.pids_max =
      limits.pids_max > 0 ? limits.pids_max : firecracker::MinPids(static_cast<int>(config.vcpu_count));
  RETURN_IF_ERROR(Annotate(
      firecracker::CheckLimitsForGuest(c, static_cast<int>(config.vcpu_count), config.memory_mib), "limits"));
  return c;
}

ResourceLimits ResourceLimitsOf(const firecracker::CgroupLimits& c) {
  ResourceLimits l;
  l.memory_mib = static_cast<uint32_t>(c.memory_bytes >> 20);
  l.cpu_percent = c.cpu_period_us > 0 ? static_cast<uint32_t>(c.cpu_quota_us * 100 / c.cpu_period_us) : 0;
  l.cpu_weight = c.cpu_weight;
  l.pids_max = static_cast<uint32_t>(c.pids_max);
  return l;
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
    // One inode fewer per VM without drives (each costs on a busy ext4).
    const std::string made = core.NeedsDrivesDir(info.config) ? entry->dir + "/drives" : entry->dir;
    if (absl::Status st = MakeDirs(made, 0700); !st.ok()) {
      (void)RemoveTree(entry->dir);
      return Annotate(st, "vm directory");
    }
  }
  // Undoes what is done so far when Begin fails.
  auto abandon = [&core, &entry, id = info.id](absl::Status st) {
    if (entry->vmm != nullptr) (void)entry->vmm->Kill();
    entry->vmm.reset();
    core.ReleaseJail(id);
    (void)RemoveTree(entry->dir);
    return st;
  };
  uint32_t uid = 0;
  std::optional<firecracker::JailPaths> jail;
  if (core.jailed()) {
    // The VM's own uid (a pooled process already holds it under this id).
    absl::StatusOr<uint32_t> leased = core.uids->Lease(info.id);
    if (!leased.ok()) return abandon(Annotate(leased.status(), "uid for the VM's jail"));
    uid = *leased;
    absl::StatusOr<firecracker::JailPaths> paths = core.env.vmms->JailFor(info.id);
    if (!paths.ok()) return abandon(paths.status());
    jail = *std::move(paths);
  }
  Registry::Reservation own;
  if (names == nullptr) {
    info.name = info.id;
    absl::StatusOr<Registry::Reservation> reserved = core.registry.ReserveName(info.id);
    if (!reserved.ok()) return abandon(reserved.status());
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
    entry->op.Unlock();
    return abandon(Annotate(st, absl::StrCat("create vm ", id)));
  }
  auto creation = std::unique_ptr<Creation>(new Creation(core, std::move(entry), std::move(id)));
  creation->uid_ = uid;
  creation->jail_ = std::move(jail);
  return creation;
}

Creation::~Creation() {
  if (committed_) return;
  VmEntry& e = *entry_;
  core_.ReleaseResources(e);  // the process, its jail and uid, the session, the network
  e.deleting = true;          // an operation waiting for this VM's lock finds it gone
  std::string why = error_.ToString();
  (void)core_.registry.Transition(e, VmState::kFailed, "fail", why);
  core_.registry.Remove(id_);
  (void)RemoveTree(e.dir);
  e.op.Unlock();
}

absl::Status Creation::SetupNetwork(const std::vector<PortMapping>& publish) {
  absl::Time t = absl::Now();
  // A jailed Firecracker may open only a tap its uid owns.
  ASSIGN_OR_RETURN(VmNetworkInfo net, core_.env.network->Setup(id_, publish, uid_));
  netns_ = std::move(net.netns);
  netns_name_ = net.netns_name;
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

// The VM's private copies: writable drives, and (jailed) `files.copies`.
// Unjailed, read-only drives are links in the VM's drive directory, which its
// mount namespace puts at <state>/drives; jailed, they are `shared` files.
absl::Status Creation::PrepareDrives(const VmConfig& config, const DriveSource& source, const VmFiles& files,
                                     const CancelToken& cancel) {
  auto copy = [&](const std::string& src, const std::string& dst, absl::string_view what) -> absl::Status {
    RETURN_IF_ERROR(cancel.Check());
    RETURN_IF_ERROR(Annotate(core_.env.host->CopyDisk(src, dst, cancel), what));
    if (jail_.has_value()) RETURN_IF_ERROR(firecracker::ChownForJail(dst, uid_, uid_, 0600));
    return absl::OkStatus();
  };
  // A directory of the chroot holding the VM's private copies is the VM's
  // (fcvmd's umask would otherwise keep its uid out).
  auto jail_dir = [&](const std::string& host_dir) -> absl::Status {
    RETURN_IF_ERROR(MakeDirs(host_dir, 0700));
    return firecracker::ChownForJail(host_dir, uid_, uid_, 0700);
  };
  if (jail_.has_value()) {
    if (!config.drives.empty()) RETURN_IF_ERROR(jail_dir(HostPath("/drives")));
    for (const DriveConfig& d : config.drives) {
      if (d.read_only) continue;
      RETURN_IF_ERROR(copy(source(d), HostPath("/drives/" + d.drive_id), absl::StrCat("drive ", d.drive_id)));
    }
    for (const auto& [src, jail_path] : files.copies) {
      RETURN_IF_ERROR(jail_dir(DirOf(HostPath(jail_path))));
      RETURN_IF_ERROR(copy(src, HostPath(jail_path), jail_path));
    }
    return absl::OkStatus();
  }
  std::string dir = entry_->dir + "/drives";
  for (const DriveConfig& d : config.drives) {
    std::string dst = dir + "/" + d.drive_id;
    if (d.read_only) {
      // Read-only drives are shared: a link to the image.
      if (symlink(d.path.c_str(), dst.c_str()) < 0) return ErrnoError(absl::StrCat("symlink ", dst));
      continue;
    }
    RETURN_IF_ERROR(copy(source(d), dst, absl::StrCat("drive ", d.drive_id)));
  }
  return absl::OkStatus();
}

namespace {

// Every file a jailed VM reads in place: `files.shared` and its read-only
// drives.
std::vector<firecracker::JailFile> SharedFiles(const VmFiles& files, const VmConfig& config) {
  std::vector<firecracker::JailFile> out = files.shared;
  for (const DriveConfig& d : config.drives) {
    if (d.read_only) out.push_back({.host_path = d.path, .jail_path = "/drives/" + d.drive_id});
  }
  return out;
}

}  // namespace

absl::Status Creation::Launch(const VmFiles& files, const VmConfig& config,
                              const firecracker::CgroupLimits& limits, const CancelToken& cancel) {
  ASSIGN_OR_RETURN(LaunchSpec spec, core_.LaunchSpecFor(id_, entry_->dir, limits, !config.drives.empty()));
  spec.cancel = cancel;
  if (spec.jail.has_value()) {
    spec.jail->files = SharedFiles(files, config);
    if (!netns_name_.empty()) spec.jail->netns_path = "/run/netns/" + netns_name_;
  } else {
    spec.netns_fd = netns_ ? netns_.get() : -1;
  }
  ASSIGN_OR_RETURN(entry_->vmm, core_.env.vmms->Launch(spec));
  return absl::OkStatus();
}

// A pooled jailed process becomes this VM: its files linked in, its limits set.
absl::Status Creation::FillJailed(const VmFiles& files, const VmConfig& config,
                                  const firecracker::CgroupLimits& limits) {
  for (const firecracker::JailFile& f : SharedFiles(files, config)) {
    RETURN_IF_ERROR(Annotate(entry_->vmm->PlaceFile(f), f.jail_path));
  }
  return Annotate(entry_->vmm->UpdateLimits(limits), "limits of the pooled process");
}

absl::Status Creation::AttachProcessAndDrives(const VmConfig& config, const DriveSource& source,
                                              const VmFiles& files, const firecracker::CgroupLimits& limits,
                                              const CancelToken& cancel) {
  VmEntry& e = *entry_;
  if (jail_.has_value() && e.vmm == nullptr) RETURN_IF_ERROR(firecracker::PrepareJail(*jail_));
  absl::Status drives;
  absl::Duration disks;
  if (e.vmm != nullptr) {
    absl::Time t = absl::Now();
    drives = PrepareDrives(config, source, files, cancel);
    disks = absl::Now() - t;
    if (drives.ok() && jail_.has_value()) drives = FillJailed(files, config, limits);
  } else {
    // Copy the drives on the leaf executor while Firecracker starts here.
    TaskGroup copy;
    copy.Run(*core_.leaf_executor, [&] {
      absl::Time t = absl::Now();
      drives = PrepareDrives(config, source, files, cancel);
      disks = absl::Now() - t;
    });
    absl::Status launched = Launch(files, config, limits, cancel);
    copy.Wait();
    RETURN_IF_ERROR(launched);
  }
  absl::Duration ready = e.vmm->startup_time();
  pid_t pid = e.vmm->pid();
  std::string console = e.vmm->console_log_path();
  std::optional<JailStatus> jail;
  if (jail_.has_value()) {
    jail = JailStatus{.uid = uid_, .gid = uid_, .chroot = jail_->chroot_dir};
    absl::StatusOr<firecracker::CgroupLimits> in_force = e.vmm->ReadLimits();
    jail->limits = ResourceLimitsOf(in_force.ok() ? *in_force : limits);
    jail->cgroup_version = e.vmm->cgroup_version();
  }
  core_.registry.Update(e, [&](VmInfo& v) {
    v.pid = pid;
    v.console_log_path = console;
    v.timings.disks = disks;
    if (!v.timings.from_warm_pool) v.timings.process_ready = ready;
    if (jail.has_value()) {
      v.jailed = true;
      v.jail = *jail;
    }
  });
  // Watched from now on, so that arming the watch (a wake-up of the
  // supervisor's thread) happens while Firecracker loads, not after: an exit
  // seen before Commit waits for this creation's lock, then finds the VM
  // deleting (undone) or running (and handles it as any exit).
  core_.Watch(entry_);
  // Not recorded yet (its directory is its intent): a restarted fcvmd finds
  // the process by its API socket or its jail (VmmFactory::FindRunning) and
  // kills it, the VM never having run.
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
