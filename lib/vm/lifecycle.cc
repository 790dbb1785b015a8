// Pause, resume, delete, and a VM's process exiting on its own.

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

absl::StatusOr<VmInfo> SetPaused(Core& core, const std::string& ref, bool paused) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core.registry.Find(ref));
  absl::MutexLock op(&e->op);
  VmInfo info = core.registry.Info(*e);
  if (e->deleting) return absl::NotFoundError(absl::StrCat("vm '", ref, "' not found"));
  const VmState to = paused ? VmState::kPaused : VmState::kRunning;
  const char* verb = paused ? "pause" : "resume";
  RETURN_IF_ERROR(CheckTransition(info.id, info.state, to, verb));
  if (e->vmm == nullptr)
    return absl::FailedPreconditionError(absl::StrCat("vm ", info.id, " has no process"));
  RETURN_IF_ERROR(Annotate(paused ? e->vmm->Pause() : e->vmm->Resume(), absl::StrCat(verb, " vm ", info.id)));
  RETURN_IF_ERROR(core.registry.Transition(*e, to, verb));
  return core.registry.Info(*e);
}

absl::StatusOr<DeleteResult> DeleteVm(Core& core, const std::shared_ptr<VmEntry>& e, bool force,
                                      absl::Duration grace) {
  absl::MutexLock op(&e->op);
  VmInfo info = core.registry.Info(*e);
  // Gone while this call waited for the VM's lock (a failed creation, or
  // another delete).
  if (e->deleting) return absl::NotFoundError(absl::StrCat("vm '", info.id, "' not found"));
  RETURN_IF_ERROR(core.registry.Transition(*e, VmState::kStopping, "delete"));
  e->deleting = true;
  DeleteResult result;
  result.id = info.id;
  core.Unwatch(*e);
  if (e->vmm != nullptr) {
    // Firecracker exits on SIGTERM; give it the grace period to do so.
    result.forced = force || !e->vmm->Terminate(grace);
  }
  core.ReleaseResources(*e);
  (void)RemoveTree(e->dir);
  core.registry.Remove(info.id);
  {
    absl::MutexLock lock(&core.pager_mu);
    core.pager_errors.erase(info.id);
  }
  Event ev;
  ev.kind = EventKind::kVmState;
  ev.vm_id = info.id;
  ev.snapshot_id = info.snapshot_id;
  ev.state = VmState::kStopped;
  ev.previous_state = VmState::kStopping;
  ev.message = result.forced ? "deleted (killed)" : "deleted";
  core.Publish(std::move(ev));
  core.metrics->VmDeleted(result.forced);
  return result;
}

// The process of a VM exited while nobody asked it to: the VM is marked
// stopped (exit 0) or failed, with why, and its resources are released.
void HandleExit(Core& core, const std::string& vm_id, uint64_t watch) {
  absl::StatusOr<std::shared_ptr<VmEntry>> found = core.registry.Find(vm_id);
  if (!found.ok()) return;
  std::shared_ptr<VmEntry> e = *found;
  absl::MutexLock op(&e->op);
  // Stale: the VM is being deleted, or its process was replaced or unwatched.
  if (e->deleting || e->watch != watch || e->vmm == nullptr) return;
  e->watch = 0;
  std::string recent = e->vmm->RecentOutput();
  absl::StatusOr<ExitStatus> exit = e->vmm->Kill();
  std::string why = absl::StrCat("firecracker ", exit.ok() && exit->known ? exit->ToString() : "exited");
  if (!recent.empty()) absl::StrAppend(&why, "; last output: ", recent);
  {
    absl::MutexLock lock(&core.pager_mu);
    auto it = core.pager_errors.find(vm_id);
    if (it != core.pager_errors.end()) {
      why = absl::StrCat("page server dropped the clone: ", it->second, "; ", why);
      core.pager_errors.erase(it);
    }
  }
  core.ReleaseResources(*e);
  // A re-adopted process is not our child: how it ended is unknown, which is
  // no reason to call it failed.
  bool clean = exit.ok() && (exit->success() || !exit->known);
  VmState to = clean ? VmState::kStopped : VmState::kFailed;
  spdlog::warn("vm {}: {}", vm_id, why);
  core.metrics->VmExited(to);
  if (absl::Status st = core.registry.Transition(*e, to, "stop", why); !st.ok()) {
    spdlog::warn("vm {}: {}", vm_id, st);
  }
}

}  // namespace fcvm::vm
