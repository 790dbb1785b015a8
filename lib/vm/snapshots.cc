// Snapshots: create (pause, memory + vmstate, drives, resume), describe,
// delete.

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "lib/storage/disk.h"
#include "lib/vm/core.h"
#include "lib/vm/record.h"
#include "lib/vm/validate.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

SnapshotInfo DescribeSnapshot(Core& core, const storage::SnapshotRecord& r) {
  SnapshotInfo s;
  s.id = r.id;
  s.name = r.name;
  s.labels = r.labels;
  s.source_vm_id = r.source_vm_id;
  s.config = ConfigFromJson(r.config_json).value_or(VmConfig{});
  s.firecracker_version = r.firecracker_version;
  s.memory_bytes = r.memory_bytes;
  s.memory_page_size = SnapshotPageSize(r, s.config);
  s.vmstate_bytes = r.vmstate_bytes;
  s.vmstate_sha256 = r.vmstate_sha256;
  s.memory_sha256 = r.memory_sha256;
  s.created_at = r.created_at;
  s.create_duration = r.create_duration;
  s.jailed = r.jailed;
  s.path = core.store->Dir(r.id);
  s.clone_count = core.registry.LiveCloneCount(r.id);
  s.parent_id = r.parent_id;
  s.memory_allocated_bytes = r.memory_allocated_bytes;
  if (absl::StatusOr<std::vector<std::string>> layers = core.store->MemoryLayers(r); layers.ok())
    s.memory_layers = static_cast<uint32_t>(layers->size());
  if (!r.host_json.empty()) {
    absl::StatusOr<firecracker::SnapshotHost> host = firecracker::SnapshotHostFromJson(r.host_json);
    s.host_recorded = host.ok();
    if (host.ok()) s.host = *std::move(host);
  }
  std::string mem = storage::SnapshotStore::MemoryPath(s.path);
  for (const uffd::SnapshotStats& st : core.env.pager->GetStats().snapshots) {
    if (st.mem_file == mem) s.zero_pages = st.zero_pages;
  }
  uffd::SnapshotFiles files;
  files.mem_file_path = mem;
  files.working_set_path = storage::SnapshotStore::PagerDir(s.path) + "/wset";
  s.working_set_pages = core.env.pager->WorkingSetPages(r.id, files);
  return s;
}

namespace {

// Diff snapshots (live forks) are written to a tmpfs first: Firecracker
// fsyncs what it writes, which on the store's disk was about half of a 16 MiB
// fork's pause. The files are copied into the store, and fsynced there, once
// the VM runs again (TakeStaged). Staged::vmm_dir is the directory as
// Firecracker names it, host_dir the same one as fcvmd reads it.
struct Staged {
  std::string vmm_dir;
  std::string host_dir;
  bool remove_dir = false;  // unjailed: a directory of ours in /dev/shm
};

bool IsTmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

// Mounts a tmpfs at `dir` of a jailed Firecracker's own mount namespace (the
// jailer pivots into a private one, so a mount made on the host's side of
// the chroot would not show in it), owned by its uid. Done on a thread of
// its own: setns(CLONE_NEWNS) needs a thread that shares no fs_struct.
absl::Status MountTmpfsInJail(pid_t pid, const std::string& dir, uint64_t bytes, uint32_t uid, uint32_t gid) {
  absl::Status result;
  std::thread mounter([&] {
    UniqueFd ns(::open(absl::StrCat("/proc/", pid, "/ns/mnt").c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) {
      result = ErrnoError("open the jail's mount namespace");
    } else if (unshare(CLONE_FS) < 0) {
      result = ErrnoError("unshare(CLONE_FS)");
    } else if (setns(ns.get(), CLONE_NEWNS) < 0) {
      result = ErrnoError("setns into the jail's mount namespace");
    } else if (mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) {
      result = ErrnoError(absl::StrCat("mkdir ", dir, " in the jail"));
    } else {
      const std::string opts = absl::StrCat("size=", bytes, ",mode=0700,uid=", uid, ",gid=", gid);
      if (mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.c_str()) < 0)
        result = ErrnoError(absl::StrCat("mount a tmpfs at ", dir, " in the jail"));
    }
  });
  mounter.join();
  return result;
}

// Where a Diff snapshot of the VM is staged; nullopt (logged) when there is
// no tmpfs for it, and the snapshot is written into the store directly.
std::optional<Staged> StageOnTmpfs(VmEntry& e, const VmInfo& info, const std::string& snapshot_id) {
  Staged s;
  absl::Status st;
  if (!info.jailed) {
    s.vmm_dir = s.host_dir = absl::StrCat(kStagingDir, "/", kStagingPrefix, getpid(), "-", snapshot_id);
    s.remove_dir = true;
    if (!IsTmpfs("/dev/shm")) {
      st = absl::FailedPreconditionError("/dev/shm is not a tmpfs");
    } else if (mkdir(s.host_dir.c_str(), 0700) < 0) {
      st = ErrnoError(absl::StrCat("mkdir ", s.host_dir));
    }
  } else {
    s.vmm_dir = "/snapshot-stage";
    s.host_dir = absl::StrCat("/proc/", e.vmm->pid(), "/root", s.vmm_dir);
    // Files a crashed fcvmd left here go first: Firecracker writes a Diff
    // into an existing memory file of the right size, over its old pages.
    for (const char* f : {"/vmstate", "/memory"}) {
      if (unlink((s.host_dir + f).c_str()) < 0 && errno != ENOENT) {
        st = ErrnoError(absl::StrCat("remove the stale staged ", s.host_dir, f));
      }
    }
    if (st.ok() && !IsTmpfs(s.host_dir)) {
      // At most the guest's memory (a diff is sparse: only its pages count).
      st = MountTmpfsInJail(e.vmm->pid(), s.vmm_dir, (uint64_t{info.config.memory_mib} + 16) << 20,
                            info.jail.uid, info.jail.gid);
      if (st.ok() && !IsTmpfs(s.host_dir)) st = absl::InternalError("the tmpfs does not show in the jail");
    }
  }
  if (!st.ok()) {
    spdlog::info("vm {}: Diff snapshot written to the store directly (no tmpfs to stage it: {})", info.id,
                 st);
    return std::nullopt;
  }
  return s;
}

void RemoveStaged(const Staged& s) {
  for (const char* f : {"/vmstate", "/memory"}) (void)unlink((s.host_dir + f).c_str());
  if (s.remove_dir) (void)rmdir(s.host_dir.c_str());
}

// The staged files into the pending snapshot, 0640 root, durable; holes stay
// holes (they are what a layer does not hold).
absl::Status TakeStaged(const Staged& s, const storage::PendingSnapshot& pending, const CancelToken& cancel) {
  absl::Cleanup remove = [&s] { RemoveStaged(s); };
  const std::pair<std::string, std::string> files[] = {
      {s.host_dir + "/vmstate", storage::SnapshotStore::VmstatePath(pending.dir)},
      {s.host_dir + "/memory", storage::SnapshotStore::MemoryPath(pending.dir)}};
  for (const auto& [from, to] : files) {
    RETURN_IF_ERROR(
        Annotate(storage::CopyDisk(from, to, {.durable = true, .mode = 0640, .cancel = cancel}).status(),
                 "move the staged snapshot into the store"));
  }
  return absl::OkStatus();
}

// Has the paused VM write its vmstate and memory into the pending snapshot,
// 0640 root. A jailed Firecracker writes them, as its own uid, into a
// directory of its jail; they are then moved out of it. With `staged` (Diff
// snapshots), they are written there instead, for TakeStaged.
absl::Status WriteSnapshotFiles(VmEntry& e, const VmInfo& info, const storage::PendingSnapshot& pending,
                                firecracker::SnapshotType type, const std::optional<Staged>& staged) {
  const std::string vmstate = storage::SnapshotStore::VmstatePath(pending.dir);
  const std::string memory = storage::SnapshotStore::MemoryPath(pending.dir);
  // Snapshots of large VMs take a while: a minute per GiB, at least 60 s.
  absl::Duration timeout = std::max(absl::Seconds(60), absl::Seconds(60) * (info.config.memory_mib / 1024));
  firecracker::SnapshotCreate create;
  create.type = type;
  if (staged.has_value()) {
    create.snapshot_path = staged->vmm_dir + "/vmstate";
    create.mem_file_path = staged->vmm_dir + "/memory";
    return Annotate(e.vmm->CreateSnapshot(create, timeout), absl::StrCat("snapshot vm ", info.id));
  }
  if (!info.jailed) {
    create.snapshot_path = vmstate;
    create.mem_file_path = memory;
    RETURN_IF_ERROR(Annotate(e.vmm->CreateSnapshot(create, timeout), absl::StrCat("snapshot vm ", info.id)));
    for (const std::string& f : {vmstate, memory}) {
      if (chmod(f.c_str(), 0640) < 0) return ErrnoError(absl::StrCat("chmod ", f));
    }
    return absl::OkStatus();
  }
  const std::string out = info.jail.chroot + "/snapshot-out";
  (void)RemoveTree(out);
  RETURN_IF_ERROR(MakeDirs(out, 0700));
  absl::Cleanup remove_out = [&out] { (void)RemoveTree(out); };
  RETURN_IF_ERROR(firecracker::ChownForJail(out, info.jail.uid, info.jail.gid, 0700));
  create.snapshot_path = "/snapshot-out/vmstate";
  create.mem_file_path = "/snapshot-out/memory";
  RETURN_IF_ERROR(Annotate(e.vmm->CreateSnapshot(create, timeout), absl::StrCat("snapshot vm ", info.id)));
  RETURN_IF_ERROR(firecracker::TakeFromJail(out + "/vmstate", vmstate, 0640));
  RETURN_IF_ERROR(firecracker::TakeFromJail(out + "/memory", memory, 0640));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TakenSnapshot> TakeSnapshot(Core& core, VmEntry& e, const SnapshotTake& take,
                                           const CancelToken& cancel) {
  VmInfo info = core.registry.Info(e);
  if (e.deleting) return absl::NotFoundError(absl::StrCat("vm '", info.name, "' not found"));
  if (info.state != VmState::kRunning && info.state != VmState::kPaused) {
    return absl::FailedPreconditionError(
        absl::StrCat("vm ", info.id, " is ", StateName(info.state), "; cannot snapshot"));
  }
  if (e.vmm == nullptr) return absl::FailedPreconditionError(absl::StrCat("vm ", info.id, " has no process"));
  const bool diff = !take.parent_id.empty();
  // Where the VM's private drive copies are: in its jail, or its directory.
  auto drive_copy = [&](const DriveConfig& d) {
    return info.jailed ? info.jail.chroot + "/drives/" + d.drive_id : e.dir + "/drives/" + d.drive_id;
  };
  // The memory file is written in full (a diff: at most in full); the drives
  // are copied (reflinked where possible, but a snapshot must not count on
  // it).
  uint64_t need = (uint64_t{info.config.memory_mib} << 20) + (1 << 20);
  for (const DriveConfig& d : info.config.drives) {
    if (!d.read_only) need += core.env.host->AllocatedBytes(drive_copy(d)).value_or(0);
  }
  RETURN_IF_ERROR(
      core.env.host->CheckFreeSpace(core.store->root(), need, absl::StrCat("a snapshot of vm ", info.id)));
  RETURN_IF_ERROR(cancel.Check());
  ASSIGN_OR_RETURN(storage::PendingSnapshot pending, core.store->Begin(take.id, take.name));
  absl::Cleanup abort = [&core, &pending] { core.store->Abort(pending); };

  // Firecracker resets the VM's dirty-page log as it writes the snapshot:
  // from here on the VM's memory base is unknown until this snapshot is
  // committed (a later fork over the old base would miss pages).
  if (!info.memory_base.empty()) {
    core.registry.Update(e, [](VmInfo& v) { v.memory_base.clear(); });
    if (absl::Status st = core.registry.Persist(e); !st.ok())
      return Annotate(st, "record vm before snapshot");
  }
  bool was_running = info.state == VmState::kRunning;
  TakenSnapshot out;
  absl::Time start = absl::Now();
  absl::Time paused_at = start;
  if (was_running) {
    RETURN_IF_ERROR(Annotate(e.vmm->Pause(), absl::StrCat("pause vm ", info.id, " for snapshot")));
    // Recorded as this snapshot's pause: should fcvmd stop before it
    // resumes the VM, the next fcvmd resumes it (reconcile.cc).
    core.registry.Update(e, [](VmInfo& v) { v.paused_for_snapshot = true; });
    (void)core.registry.Transition(e, VmState::kPaused, "pause", "paused for snapshot");
  }
  auto resume = [&] {
    if (was_running && e.vmm->Resume().ok()) {
      out.pause = absl::Now() - paused_at;
      core.registry.Update(e, [](VmInfo& v) { v.paused_for_snapshot = false; });
      (void)core.registry.Transition(e, VmState::kRunning, "resume");
    }
    was_running = false;
  };
  absl::Cleanup resume_on_error = resume;
  std::optional<Staged> staged;
  if (diff) staged = StageOnTmpfs(e, info, take.id);
  absl::Cleanup unstage = [&staged] {
    if (staged.has_value()) RemoveStaged(*staged);
  };
  RETURN_IF_ERROR(WriteSnapshotFiles(
      e, info, pending, diff ? firecracker::SnapshotType::kDiff : firecracker::SnapshotType::kFull, staged));
  storage::SnapshotRecord record;
  record.jailed = info.jailed;
  record.parent_id = take.parent_id;
  for (const DriveConfig& d : info.config.drives) {
    if (d.read_only) continue;
    RETURN_IF_ERROR(
        Annotate(storage::CopyDisk(drive_copy(d), storage::SnapshotStore::DiskPath(pending.dir, d.drive_id),
                                   {.durable = true, .mode = 0600, .cancel = cancel})
                     .status(),
                 absl::StrCat("snapshot drive ", d.drive_id)));
    record.disk_ids.push_back(d.drive_id);
  }
  absl::Duration took = absl::Now() - start;
  if (take.resume) {
    std::move(resume_on_error).Cancel();
    resume();
  }
  if (staged.has_value()) {
    RETURN_IF_ERROR(TakeStaged(*staged, pending, cancel));
    std::move(unstage).Cancel();
  }
  record.labels = take.labels;
  record.source_vm_id = info.id;
  record.config_json = ConfigToJson(info.config);
  record.memory_page_size = GuestPageSize(info.config.huge_pages);
  record.firecracker_version = core.env.vmms != nullptr ? core.env.vmms->version() : "";
  if (absl::StatusOr<firecracker::SnapshotHost> host = core.ThisHost(); host.ok()) {
    // The format the vmstate really has (the binary may have been replaced
    // since fcvmd started).
    absl::StatusOr<firecracker::Version> format =
        firecracker::ReadVmstateFormat(storage::SnapshotStore::VmstatePath(pending.dir));
    if (format.ok()) host->snapshot_format = format->ToString();
    record.host_json = firecracker::SnapshotHostToJson(*host);
  }
  record.create_duration = took;
  ASSIGN_OR_RETURN(out.record, core.store->Commit(pending, record));
  std::move(abort).Cancel();
  if (!take.resume) std::move(resume_on_error).Cancel();
  // The VM's memory now equals this snapshot's, plus what it writes from here.
  // Left paused when asked to (take.resume false): then the pause is its own.
  core.registry.Update(e, [&](VmInfo& v) {
    v.memory_base = out.record.id;
    v.paused_for_snapshot = false;
  });
  if (absl::Status st = core.registry.Persist(e); !st.ok()) spdlog::warn("record vm {}: {}", info.id, st);
  out.took = took;
  return out;
}

absl::StatusOr<SnapshotInfo> CreateSnapshot(Core& core, const SnapshotRequest& request,
                                            const CancelToken& cancel) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core.registry.Find(request.vm_ref));
  SnapshotTake take;
  take.id = NewId("snap");
  take.name = request.name.empty() ? take.id : request.name;
  RETURN_IF_ERROR(ValidateName("snapshot name", take.name));
  RETURN_IF_ERROR(ValidateLabels("snapshot labels", request.labels));
  take.labels = request.labels;
  take.resume = request.after == AfterSnapshot::kResume;
  SnapshotInfo out;
  std::string vm_id;
  {
    absl::MutexLock op(&e->op);
    ASSIGN_OR_RETURN(TakenSnapshot done, TakeSnapshot(core, *e, take, cancel));
    out = DescribeSnapshot(core, done.record);
    vm_id = done.record.source_vm_id;
    spdlog::info("snapshot {} ({}) of vm {}: {} MiB in {}", done.record.id, done.record.name, vm_id,
                 done.record.memory_bytes >> 20, absl::FormatDuration(done.took));
  }
  Event ev;
  ev.kind = EventKind::kSnapshotCreated;
  ev.snapshot_id = out.id;
  ev.vm_id = out.source_vm_id;
  ev.message = absl::StrCat("snapshot ", out.name, " created");
  core.Publish(std::move(ev));
  if (request.after == AfterSnapshot::kStop) {
    RETURN_IF_ERROR(Annotate(DeleteVm(core, e, false, absl::Seconds(5)).status(), "stop after snapshot"));
  }
  return out;
}

absl::StatusOr<DeleteSnapshotResult> DeleteSnapshot(Core& core, const std::string& ref, bool force) {
  ASSIGN_OR_RETURN(storage::SnapshotRecord r, core.store->Get(ref));
  // Refused while a clone request uses it; from here on no request can start
  // using it.
  ASSIGN_OR_RETURN(Registry::SnapshotUse deleting, core.registry.BeginSnapshotDeletion(r.id, r.name));
  std::vector<std::shared_ptr<VmEntry>> clones = core.registry.ClonesOf(r.id);
  if (!clones.empty() && !force) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", r.name, " has ", clones.size(),
                                                      " clone(s); delete them first or use force"));
  }
  if (std::vector<std::string> children = core.store->Children(r.id); !children.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", r.name, " is the memory layer under ",
                                                      children.size(), " fork snapshot(s) (",
                                                      children.front(), "); delete those first"));
  }
  DeleteSnapshotResult result;
  result.id = r.id;
  for (auto& e : clones) {
    absl::StatusOr<DeleteResult> d = DeleteVm(core, e, /*force=*/true, absl::ZeroDuration());
    if (d.ok()) result.stopped_vm_ids.push_back(d->id);
  }
  core.env.pager->Unpin(r.id);
  RETURN_IF_ERROR(core.store->Delete(r.id));
  Event ev;
  ev.kind = EventKind::kSnapshotDeleted;
  ev.snapshot_id = r.id;
  ev.message = absl::StrCat("snapshot ", r.name, " deleted");
  core.Publish(std::move(ev));
  return result;
}

}  // namespace fcvm::vm
