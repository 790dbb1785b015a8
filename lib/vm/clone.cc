// Clone: N VMs restored from one snapshot, each a fresh Firecracker with its
// own drives, network and page-server session.
//
// The request, top to bottom (CloneVms): check it, pin the snapshot so it
// cannot be deleted meanwhile, reserve every name at once, restore the clones
// on the clone executor (`parallelism` at a time), then settle: a cancelled
// request (client gone, deadline passed, fcvmd stopping) starts no more clones
// and deletes the ones it made; all_or_nothing deletes them when any failed.
//
// One clone (CloneOne): Creation::Begin (record, warm-pool process if no
// network) -> network -> process + drives -> page-server listener -> load
// the snapshot -> prefetch the working set, then resume -> Commit.

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"
#include "lib/vm/provision.h"
#include "lib/vm/record.h"
#include "lib/vm/validate.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {
namespace {

struct Source {
  storage::SnapshotRecord snap;
  VmConfig config;
  std::string dir;
  uffd::SnapshotFiles pager_files;   // every memory layer
  firecracker::CgroupLimits limits;  // of each clone (jailed)
};

// The clone's MMDS: the request's metadata and the clone's own fcvm keys
// (metadata.cc). A snapshot keeps no MMDS data, so without this the clone's
// store would be empty.
absl::Status PutCloneMetadata(Core& core, Creation& vm, const CloneRequest& req, uint32_t index) {
  VmInfo info = core.registry.Info(vm.entry());
  ASSIGN_OR_RETURN(std::string doc, ComposeMetadata(info, req.metadata_json, index));
  return Annotate(vm.vmm().PutMmds(doc), "set the clone's metadata (MMDS)");
}
// Where a jailed clone finds the snapshot's files in its chroot.
constexpr char kJailVmstate[] = "/snapshot/vmstate";
constexpr char kJailMemory[] = "/snapshot/memory";
constexpr char kJailUffdSocket[] = "/uffd.sock";

absl::StatusOr<VmInfo> CloneOne(Core& core, const Source& src, const CloneRequest& req,
                                Registry::Reservation& names, const std::string& name, uint32_t index,
                                const CancelToken& cancel) {
  RETURN_IF_ERROR(cancel.Check());
  core.warm->RestoreBegin();
  struct Restoring {
    Core& core;
    ~Restoring() { core.warm->RestoreEnd(); }
  } restoring{core};

  const VmConfig& config = src.config;
  VmInfo info;
  info.name = name;
  info.labels = req.labels;
  info.config = config;
  info.snapshot_id = src.snap.id;
  info.memory_base = src.snap.id;  // its dirty-page log starts at the load
  info.memory_backend = req.backend;
  info.prefetch_policy = req.policy;
  // The snapshot opens a tap with the source VM's name: a clone with a
  // network gets its own namespace holding a tap of that name, and a process
  // started inside it (never a pooled one).
  ASSIGN_OR_RETURN(std::unique_ptr<Creation> vm,
                   Creation::Begin(core, std::move(info), &names, !config.network.enabled));
  auto fail = [&vm](absl::Status st) {
    vm->Fail(st);
    return st;
  };
  if (config.network.enabled) {
    if (absl::Status st = vm->SetupNetwork(req.publish); !st.ok()) return fail(st);
  }
  DriveSource snapshot_disk = [&src](const DriveConfig& d) {
    return storage::SnapshotStore::DiskPath(src.dir, d.drive_id);
  };
  std::string mem = storage::SnapshotStore::MemoryPath(src.dir);
  std::string vmstate = storage::SnapshotStore::VmstatePath(src.dir);
  // A jailed clone gets its own copy of the vmstate (small) and, with the
  // File backend, a link to the memory file, which its uid can read.
  VmFiles files;
  files.copies.push_back({vmstate, kJailVmstate});
  if (req.backend == MemoryBackend::kFile)
    files.shared.push_back({.host_path = mem, .jail_path = kJailMemory});
  if (absl::Status st = vm->AttachProcessAndDrives(config, snapshot_disk, files, src.limits, cancel);
      !st.ok()) {
    return fail(st);
  }
  if (absl::Status st = cancel.Check(); !st.ok()) return fail(st);

  // Memory: the page server (UFFD) or Firecracker's own mapping (File).
  firecracker::SnapshotLoad load;
  load.snapshot_path = vm->VmmPath(kJailVmstate, vmstate);
  ClonePolicy resolved = ClonePolicy::kNone;
  if (req.backend == MemoryBackend::kUffd) {
    uffd::ListenerSpec spec;
    // Jailed: in the chroot, which only the VM's uid (and root) can enter.
    spec.socket_path = vm->jailed() ? vm->HostPath(kJailUffdSocket) : vm->entry().dir + "/uffd.sock";
    if (vm->jailed()) spec.socket_mode = 0666;
    spec.files = src.pager_files;
    spec.handshake_copy_path = HandshakeCopyPath(vm->entry().dir);
    spec.policy = req.policy;
    spec.max_connections = 1;
    spec.on_failure = uffd::FailurePolicy::kKill;
    spec.tag = vm->id();
    // A clone that prefetches is loaded paused and resumed once the working
    // set is in: every page-server thread may then help.
    spec.paused_during_prefetch = req.policy == ClonePolicy::kPrefetch || req.policy == ClonePolicy::kAuto;
    // The server's view of the snapshot stays loaded from the first clone on.
    if (absl::Status st = core.env.pager->Pin(src.snap.id, spec.files); !st.ok()) return fail(st);
    absl::StatusOr<uffd::ListenerId> listener = core.env.pager->AddListener(spec, &resolved);
    if (!listener.ok()) return fail(listener.status());
    vm->entry().listener = *listener;
    load.backend = firecracker::MemBackend::kUffd;
    load.backend_path = vm->VmmPath(kJailUffdSocket, spec.socket_path);
  } else {
    load.backend = firecracker::MemBackend::kFile;
    load.backend_path = vm->VmmPath(kJailMemory, mem);
  }
  const bool prefetch_then_resume = resolved == ClonePolicy::kPrefetch;
  core.registry.Update(vm->entry(), [&](VmInfo& v) { v.resolved_policy = resolved; });
  // Loaded paused: the clone's own metadata goes in before its vCPUs run.
  load.resume_vm = false;
  // Its dirty pages logged, so that it can be forked live (4 KiB guests:
  // KVM would log a huge-page guest's writes in 4 KiB pages).
  load.track_dirty_pages = SnapshotPageSize(src.snap, config) == 4096;

  absl::Time t = absl::Now();
  if (absl::Status st = vm->vmm().LoadSnapshot(load, core.options.clone_timeout); !st.ok()) return fail(st);
  vm->SetTimings([&](VmTimings& timings) { timings.load = absl::Now() - t; });
  if (config.vsock.enabled) {
    // The snapshot's relative uds_path, resolved in this clone's directory
    // (or its chroot).
    const std::string path = VsockHostPath(*vm);
    core.registry.Update(vm->entry(), [&](VmInfo& v) { v.vsock_path = path; });
  }
  if (absl::Status st = PutCloneMetadata(core, *vm, req, index); !st.ok()) return fail(st);
  if (!prefetch_then_resume && !req.stay_paused) {
    if (absl::Status st = vm->vmm().Resume(); !st.ok()) return fail(Annotate(st, "resume after load"));
  }
  if (prefetch_then_resume) {
    t = absl::Now();
    absl::Time deadline = std::min(absl::Now() + core.options.clone_timeout, cancel.deadline());
    absl::Status st = core.env.pager->WaitPrefetchDone(*vm->entry().listener, deadline);
    if (!st.ok()) return fail(Annotate(st, "prefetch working set"));
    vm->SetTimings([&](VmTimings& timings) { timings.prefetch = absl::Now() - t; });
    if (!req.stay_paused) {
      if (absl::Status st = vm->vmm().Resume(); !st.ok()) return fail(Annotate(st, "resume after prefetch"));
    }
  }
  if (absl::Status st = cancel.Check(); !st.ok()) return fail(st);
  return vm->Commit(req.stay_paused ? VmState::kPaused : VmState::kRunning,
                    absl::StrCat("cloned from ", src.snap.name, " (", MemoryBackendName(req.backend), ")"));
}

// Snapshot memory files are 0640 root: a jailed VM's uid cannot read them.
// The File backend needs it to (Firecracker maps the file, and the page
// cache is what its clones share): the first File clone of a snapshot makes
// its memory file world-readable, which the store's root-only (0700)
// directories keep from everyone on the host but the jails it is linked
// into (docs/security.md).
absl::Status MakeReadableByVms(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("stat ", path));
  if ((st.st_mode & S_IROTH) != 0) return absl::OkStatus();
  if (chmod(path.c_str(), (st.st_mode & 07777) | S_IRUSR | S_IRGRP | S_IROTH) < 0) {
    return ErrnoError(absl::StrCat("chmod ", path));
  }
  spdlog::info("{} made readable for the jailed VMs of File-backend clones", path);
  return absl::OkStatus();
}

VmInfo FailedClone(const Source& src, const CloneRequest& req, const std::string& name,
                   const absl::Status& st) {
  VmInfo failed;
  failed.name = name;
  failed.state = VmState::kFailed;
  failed.snapshot_id = src.snap.id;
  failed.memory_backend = req.backend;
  failed.prefetch_policy = req.policy;
  failed.config = src.config;
  failed.error = st.ToString();
  return failed;
}

}  // namespace

absl::StatusOr<uffd::SnapshotFiles> SnapshotPagerFiles(const storage::SnapshotStore& store,
                                                       const storage::SnapshotRecord& record) {
  const std::string dir = store.Dir(record.id);
  uffd::SnapshotFiles files;
  files.mem_file_path = storage::SnapshotStore::MemoryPath(dir);
  files.zero_map_path = storage::SnapshotStore::PagerDir(dir) + "/zeromap";
  files.working_set_path = storage::SnapshotStore::PagerDir(dir) + "/wset";
  ASSIGN_OR_RETURN(files.lower_layers, store.MemoryLayers(record));
  files.lower_layers.pop_back();  // the record's own
  return files;
}

std::string HandshakeCopyPath(const std::string& vm_dir) { return vm_dir + "/uffd-handshake.json"; }

absl::StatusOr<CloneResult> CloneVms(Core& core, const CloneRequest& req, const CancelToken& cancel) {
  RETURN_IF_ERROR(core.RequireVmms());
  RETURN_IF_ERROR(ValidateCloneRequest(req));
  RETURN_IF_ERROR(ValidateMetadata(req.metadata_json));

  // The snapshot, held for the whole request: deleting it is refused until
  // the request ends.
  ASSIGN_OR_RETURN(storage::SnapshotRecord found, core.store->Get(req.snapshot_ref));
  ASSIGN_OR_RETURN(Registry::SnapshotUse use, core.registry.UseSnapshot(found.id));
  Source src;
  ASSIGN_OR_RETURN(src.snap, core.store->Get(found.id));  // still there now that it is held
  ASSIGN_OR_RETURN(src.config, ConfigFromJson(src.snap.config_json));
  src.dir = core.store->Dir(src.snap.id);
  RETURN_IF_ERROR(core.CheckRestorable(src.snap, src.dir));
  ASSIGN_OR_RETURN(src.pager_files, SnapshotPagerFiles(*core.store, src.snap));
  if (!src.pager_files.lower_layers.empty() && req.backend == MemoryBackend::kFile) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot ", src.snap.name, " is a live fork's memory layer over ",
                     src.pager_files.lower_layers.size(),
                     " other(s): only the page server (UFFD backend) reads layers; a File-backed clone needs "
                     "a whole memory "
                     "file, which fcvmd makes in the background once a chain is ",
                     kCompactLayers, " layers deep (or take a full snapshot: fcvmctl snapshot create)"));
  }

  const VmConfig& config = src.config;
  if (req.network_enabled.has_value() && *req.network_enabled != config.network.enabled) {
    return absl::InvalidArgumentError(
        absl::StrCat("network.enabled: clones keep their snapshot's network choice; snapshot ", src.snap.name,
                     config.network.enabled ? " has a network" : " has no network"));
  }
  if (!config.network.enabled && !req.publish.empty()) {
    return absl::InvalidArgumentError("the snapshot's VM has no network, so its clones cannot publish ports");
  }
  if (config.network.enabled) RETURN_IF_ERROR(core.env.network->Available());
  if (src.snap.jailed != core.jailed()) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot ", src.snap.name,
                     src.snap.jailed ? " was made by a jailed VM" : " was made by an unjailed VM",
                     " and bakes in its paths; this fcvmd runs VMs ",
                     core.jailed() ? "under the jailer" : "without the jailer",
                     ": clone it with an fcvmd that does the same"));
  }
  if (req.limits.has_value()) RETURN_IF_ERROR(CheckLimitsEnforceable(core, *req.limits));
  ASSIGN_OR_RETURN(src.limits, CgroupLimitsFor(config, req.limits.value_or(config.limits)));
  if (core.jailed() && req.backend == MemoryBackend::kFile) {
    // Every File clone maps the memory file itself: its uid must read it.
    RETURN_IF_ERROR(MakeReadableByVms(storage::SnapshotStore::MemoryPath(src.dir)));
  }
  // Huge-page snapshots (issue 14): Firecracker restores hugetlbfs memory only
  // through a page server, and exits on a File load of it.
  RETURN_IF_ERROR(ValidateCloneBackend(src.snap.name, SnapshotPageSize(src.snap, config), req.backend));
  RETURN_IF_ERROR(CheckGuestMemory(core, config, req.count));
  RETURN_IF_ERROR(CheckDiskForCopies(
      core, config,
      [&src](const DriveConfig& d) { return storage::SnapshotStore::DiskPath(src.dir, d.drive_id); },
      req.count, absl::StrCat(req.count, " clone(s)' private disk copies")));

  // Every name at once: "<prefix>-<n>".
  std::string prefix = req.name_prefix.empty() ? src.snap.name : req.name_prefix;
  if (prefix.size() > kMaxClonePrefixBytes) prefix.resize(kMaxClonePrefixBytes);
  ASSIGN_OR_RETURN(Registry::Reservation names, core.registry.ReserveCloneNames(prefix, req.count));
  std::vector<std::string> name_of = names.names();

  absl::Time start = absl::Now();
  CloneResult result;
  result.clones.resize(req.count);
  std::vector<absl::Status> errors(req.count);
  uint32_t parallelism = req.parallelism > 0 ? req.parallelism : core.options.default_clone_parallelism;
  parallelism = std::clamp<uint32_t>(parallelism, 1, req.count);
  std::atomic<uint32_t> next{0};
  // The workers share the reservation: Registry::Insert, its only user, takes
  // the registry's lock.
  auto worker = [&] {
    for (uint32_t i; (i = next.fetch_add(1)) < req.count;) {
      absl::StatusOr<VmInfo> clone = absl::CancelledError("not started");
      if (absl::Status st = cancel.Check(); !st.ok()) {
        clone = st;  // cancelled: no new clone starts
      } else {
        core.metrics->CloneStarted(req.backend);
        clone = CloneOne(core, src, req, names, name_of[i], i, cancel);
        core.metrics->CloneFinished(req.backend, clone.status(), clone.ok() ? &*clone : nullptr);
      }
      if (clone.ok()) {
        result.clones[i] = *std::move(clone);
      } else {
        errors[i] = clone.status();
        result.clones[i] = FailedClone(src, req, name_of[i], clone.status());
        if (!cancel.cancelled())
          spdlog::warn("clone {} of {} failed: {}", name_of[i], src.snap.name, clone.status());
      }
      if (req.on_clone_done) req.on_clone_done(result.clones[i]);
    }
  };
  TaskGroup workers;
  for (uint32_t w = 1; w < parallelism; ++w) workers.Run(*core.clone_executor, worker);
  worker();
  workers.Wait();
  result.total = absl::Now() - start;

  absl::Status first_error;
  for (uint32_t i = 0; i < req.count; ++i) {
    if (errors[i].ok()) {
      ++result.succeeded;
    } else {
      ++result.failed;
      if (first_error.ok()) first_error = errors[i];
    }
  }
  // A cancelled request leaves nothing behind: its caller cannot learn about
  // the clones it made. all_or_nothing leaves nothing when any failed.
  absl::Status cancelled = cancel.Check();
  if (!cancelled.ok() || (req.all_or_nothing && result.failed > 0)) {
    for (const VmInfo& v : result.clones) {
      if (v.state == VmState::kFailed || v.id.empty()) continue;
      absl::StatusOr<std::shared_ptr<VmEntry>> e = core.registry.Find(v.id);
      if (e.ok()) (void)DeleteVm(core, *e, /*force=*/true, absl::ZeroDuration());
    }
    if (!cancelled.ok()) {
      spdlog::info("clone {} x{} cancelled ({}); {} clone(s) made were deleted", src.snap.name, req.count,
                   cancelled, result.succeeded);
      return cancelled;
    }
    return Annotate(first_error,
                    absl::StrCat(result.failed, " of ", req.count, " clones failed (all_or_nothing)"));
  }
  spdlog::info("cloned {} x{}: {} ok, {} failed in {}", src.snap.name, req.count, result.succeeded,
               result.failed, absl::FormatDuration(result.total));
  return result;
}

}  // namespace fcvm::vm
