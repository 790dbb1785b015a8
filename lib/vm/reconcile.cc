#include "lib/vm/reconcile.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"
#include "lib/vm/record.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

const char* ReconcileActionName(ReconcileAction action) {
  switch (action) {
    case ReconcileAction::kAdopt:
      return "adopt";
    case ReconcileAction::kKill:
      return "kill";
    case ReconcileAction::kDiscard:
      return "discard";
    case ReconcileAction::kMarkStopped:
      return "mark-stopped";
    case ReconcileAction::kKeep:
      return "keep";
  }
  return "?";
}

bool ServedByPageServer(const VmInfo& info) {
  return !info.snapshot_id.empty() && info.memory_backend == MemoryBackend::kUffd;
}

ReconcileDecision DecideReconcile(const std::string& name, const std::optional<VmInfo>& record, bool alive,
                                  const absl::Status& pages) {
  ReconcileDecision d;
  if (!record.has_value() || record->id != name) {
    d.action = ReconcileAction::kDiscard;
    d.message = alive ? absl::StrCat("killed the firecracker of ", name,
                                     " and removed its directory: it has no record")
                      : absl::StrCat("removed orphaned directory of ", name);
    return d;
  }
  const VmInfo& v = *record;
  switch (v.state) {
    case VmState::kCreating:
      // Its request never got the VM: nobody knows it exists.
      d.action = ReconcileAction::kDiscard;
      d.message = absl::StrCat("discarded ", name, ": fcvmd stopped while creating it",
                               alive ? " (its firecracker killed)" : "");
      return d;
    case VmState::kStopping:
      d.action = ReconcileAction::kDiscard;
      d.message = absl::StrCat("finished deleting ", name);
      return d;
    case VmState::kStopped:
    case VmState::kFailed:
      d.action = ReconcileAction::kKeep;
      d.state = v.state;
      d.error = v.error;
      d.message = absl::StrCat("kept the record of ", StateName(v.state), " vm ", name);
      return d;
    case VmState::kRunning:
    case VmState::kPaused:
      break;
  }
  if (!alive) {
    d.action = ReconcileAction::kMarkStopped;
    d.error = "firecracker exited while fcvmd was not running";
    d.message = absl::StrCat("marked ", name, " stopped: its firecracker is gone");
    return d;
  }
  if (ServedByPageServer(v) && !pages.ok()) {
    // Never left frozen: nobody would serve its next fault.
    d.action = ReconcileAction::kKill;
    d.error = absl::StrCat("killed at fcvmd start: the page server could not take its memory over: ",
                           pages.message());
    d.message = absl::StrCat("killed UFFD clone ", name, " (pid ", v.pid,
                             "): the page server could not take it over: ", pages.message());
    return d;
  }
  d.action = ReconcileAction::kAdopt;
  d.state = v.state;
  d.message = ServedByPageServer(v) ? absl::StrCat("re-adopted UFFD clone ", name, " (pid ", v.pid,
                                                   "), its page-server session taken over")
                                    : absl::StrCat("re-adopted ", name, " (pid ", v.pid, ")");
  return d;
}

namespace {

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return names;
  while (dirent* d = readdir(dir)) {
    std::string n = d->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(dir);
  return names;
}

}  // namespace

void RemoveStaleStaging(const std::string& dir) {
  for (const std::string& name : ListDir(dir)) {
    if (!absl::StartsWith(name, kStagingPrefix)) continue;
    // fcvm-stage-<pid of the fcvmd that staged it>-<snapshot id>
    std::vector<std::string> parts =
        absl::StrSplit(name.substr(sizeof(kStagingPrefix) - 1), absl::MaxSplits('-', 1));
    int pid = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &pid) || pid <= 0) continue;
    // Its fcvmd still runs, unless it had this pid (a restart in a pid
    // namespace): nothing of this fcvmd is staged before its reconcile.
    if (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH)) continue;
    if (absl::Status st = RemoveTree(dir + "/" + name); !st.ok()) {
      spdlog::warn("staged snapshot left by a crashed fcvmd: {}", st);
    } else {
      spdlog::info("removed {}/{}, a staged snapshot a crashed fcvmd left", dir, name);
    }
  }
}

namespace {

// This fcvmd's page server serves the live UFFD clone `record` from now on:
// its Firecracker's own userfaultfd (pidfd_getfd) and the handshake copy its
// previous session left in its directory.
absl::StatusOr<uffd::ListenerId> TakeOverPages(Core& core, const VmInfo& record, const std::string& vm_dir,
                                               pid_t pid) {
  absl::StatusOr<storage::SnapshotRecord> snap = core.store->Get(record.snapshot_id);
  if (!snap.ok()) return Annotate(snap.status(), absl::StrCat("its snapshot ", record.snapshot_id));
  absl::StatusOr<std::string> handshake = ReadFile(HandshakeCopyPath(vm_dir));
  if (!handshake.ok()) return Annotate(handshake.status(), "the copy of its page-server handshake");
  uffd::ListenerSpec spec;
  ASSIGN_OR_RETURN(spec.files, SnapshotPagerFiles(*core.store, *snap));
  spec.on_failure = uffd::FailurePolicy::kKill;
  spec.tag = record.id;
  RETURN_IF_ERROR(core.env.pager->Pin(snap->id, spec.files));
  return core.env.pager->AdoptClone(spec, *handshake, pid);
}

void Report(Core& core, const std::string& vm_id, const std::string& message) {
  spdlog::info("reconcile: {}", message);
  Event ev;
  ev.kind = EventKind::kReconcile;
  ev.vm_id = vm_id;
  ev.message = message;
  core.Publish(std::move(ev));
}

}  // namespace

void Reconcile(Core& core) {
  RemoveStaleStaging();
  // Every Firecracker running for one of our directories, recorded or not.
  std::map<pid_t, std::string> running;
  if (core.env.vmms != nullptr) running = core.env.vmms->FindRunning(core.vms_dir);
  std::map<std::string, pid_t> pid_of_dir;
  for (const auto& [pid, dir] : running) pid_of_dir[dir] = pid;

  std::vector<std::string> names = ListDir(core.vms_dir);
  // A Firecracker whose directory is gone (a crash in the middle of a
  // deletion) belongs to no VM: it is killed.
  for (const auto& [pid, dir] : running) {
    if (std::find(names.begin(), names.end(), dir.substr(core.vms_dir.size() + 1)) != names.end()) continue;
    absl::StatusOr<std::unique_ptr<Vmm>> stray = core.env.vmms->Adopt(pid, dir);
    if (!stray.ok()) continue;
    (void)(*stray)->Kill();
    Report(core, dir.substr(core.vms_dir.size() + 1),
           absl::StrCat("killed firecracker pid ", pid, ": its VM directory ", dir, " is gone"));
  }

  for (const std::string& name : names) {
    std::string vm_dir = core.vms_dir + "/" + name;
    std::optional<VmInfo> record;
    if (absl::StatusOr<std::string> text = ReadFile(vm_dir + "/vm.json"); text.ok()) {
      absl::StatusOr<VmInfo> parsed = RecordFromJson(*text);
      if (parsed.ok()) record = *std::move(parsed);
    }
    // Its process: the recorded pid if it still is this VM's Firecracker,
    // else one found by its API socket.
    std::unique_ptr<Vmm> vmm;
    if (core.env.vmms != nullptr) {
      pid_t pid = record.has_value() && record->pid > 0 ? record->pid : 0;
      if (auto it = pid_of_dir.find(vm_dir); it != pid_of_dir.end()) pid = it->second;
      if (pid > 0) {
        absl::StatusOr<std::unique_ptr<Vmm>> adopted = core.env.vmms->Adopt(pid, vm_dir);
        if (adopted.ok()) vmm = *std::move(adopted);
      }
    }
    // A live UFFD clone: this page server takes its faults over, or it is
    // killed (DecideReconcile).
    absl::Status pages = absl::OkStatus();
    std::optional<uffd::ListenerId> listener;
    if (vmm != nullptr && record.has_value() && record->id == name && ServedByPageServer(*record) &&
        (record->state == VmState::kRunning || record->state == VmState::kPaused)) {
      absl::StatusOr<uffd::ListenerId> taken = TakeOverPages(core, *record, vm_dir, vmm->pid());
      if (taken.ok()) {
        listener = *taken;
      } else {
        pages = taken.status();
      }
    }
    ReconcileDecision d = DecideReconcile(name, record, vmm != nullptr, pages);
    if (listener.has_value() && d.action != ReconcileAction::kAdopt) {
      (void)core.env.pager->RemoveListener(*listener);
      listener.reset();
    }
    switch (d.action) {
      case ReconcileAction::kDiscard:
        if (vmm != nullptr) (void)vmm->Kill();
        (void)RemoveTree(vm_dir);
        Report(core, name, d.message);
        continue;
      case ReconcileAction::kKill:
        (void)vmm->Kill();
        vmm.reset();
        break;
      case ReconcileAction::kAdopt:
      case ReconcileAction::kMarkStopped:
      case ReconcileAction::kKeep:
        break;
    }
    auto e = std::make_shared<VmEntry>();
    e->dir = vm_dir;
    e->info = *record;
    bool rerecord = false;
    if (d.action != ReconcileAction::kAdopt) {
      e->info.state = d.state;
      e->info.error = d.error;
      e->info.pid = 0;
      unlink((vm_dir + "/uffd.sock").c_str());
      unlink((vm_dir + "/api.sock").c_str());
    } else {
      e->info.pid = vmm->pid();
      // Never left frozen: a VM recorded running is resumed (the previous
      // fcvmd may have stopped between a snapshot's pause and its record;
      // resuming a running VM does nothing), and so is one paused for a
      // snapshot or fork. A VM its user paused stays paused.
      if (e->info.state == VmState::kRunning ||
          (e->info.state == VmState::kPaused && e->info.paused_for_snapshot)) {
        if (absl::Status st = vmm->Resume(); !st.ok()) {
          spdlog::warn("reconcile: resume {}: {}", name, st);
        } else if (e->info.state == VmState::kPaused) {
          e->info.state = VmState::kRunning;
          e->info.paused_for_snapshot = false;
          d.message += ", resumed: a snapshot of the previous fcvmd had paused it";
          rerecord = true;
        }
      }
      e->vmm = std::move(vmm);
      e->listener = listener;
    }
    absl::StatusOr<Registry::Reservation> names = core.registry.ReserveName(e->info.name);
    if (!names.ok()) {
      // Two records with one name (a bug of an older fcvmd): keep the VM
      // under its id.
      e->info.name = e->info.id;
      names = core.registry.ReserveName(e->info.name);
    }
    if (absl::Status st = names.ok() ? core.registry.Insert(e, *names) : names.status(); !st.ok()) {
      spdlog::warn("reconcile: cannot keep {}: {}", name, st);
      if (e->listener.has_value()) (void)core.env.pager->DetachListener(*e->listener);
      if (e->vmm != nullptr) e->vmm->Release();
      continue;
    }
    if (rerecord) {
      if (absl::Status st = core.registry.Persist(*e); !st.ok())
        spdlog::warn("reconcile: record {}: {}", name, st);
    }
    if (e->vmm != nullptr) {
      absl::MutexLock op(&e->op);
      core.Watch(e);
    }
    Report(core, name, d.message);
  }

  // Jails and uids survive only with their re-adopted VM.
  if (core.jailed()) {
    std::set<std::string> live;
    for (const std::shared_ptr<VmEntry>& e : core.registry.All()) {
      if (e->vmm != nullptr) live.insert(core.registry.Info(*e).id);
    }
    for (const std::string& id : core.env.vmms->ListJails()) {
      if (live.count(id) > 0) continue;
      if (absl::Status st = core.env.vmms->RemoveJail(id); !st.ok()) {
        spdlog::warn("reconcile: jail of {}: {}", id, st);
        continue;
      }
      Report(core, id, absl::StrCat("removed the jail of ", id));
    }
    absl::StatusOr<std::vector<std::string>> released = core.uids->Reconcile(live);
    if (!released.ok()) spdlog::warn("reconcile: uid leases: {}", released.status());
  }

  // Networks survive only with their re-adopted VM.
  absl::flat_hash_set<std::string> live;
  for (const std::shared_ptr<VmEntry>& e : core.registry.All()) {
    VmInfo info = core.registry.Info(*e);
    if (info.network.netns.empty()) continue;
    if (e->vmm != nullptr) {
      live.insert(info.id);
    } else {
      core.registry.Update(*e, [](VmInfo& v) { v.network = NetworkStatus{}; });
      (void)core.registry.Persist(*e);
    }
  }
  absl::StatusOr<std::vector<std::string>> removed = core.env.network->ReconcileOrphans(live);
  if (!removed.ok()) {
    spdlog::warn("reconcile: networks: {}", removed.status());
    return;
  }
  for (const std::string& id : *removed) Report(core, id, absl::StrCat("removed the network of ", id));
}

}  // namespace fcvm::vm
