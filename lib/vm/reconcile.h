#pragma once

// Start-up reconcile: what a previous fcvmd left in the state directory,
// turned into what this one tracks. The decision for each VM directory is a
// pure function of its record and whether its Firecracker still runs, so the
// rules are tested on their own (tests/unit/vm).

#include <optional>
#include <string>

#include "absl/status/status.h"

#include "lib/vm/types.h"

namespace fcvm::vm {

enum class ReconcileAction {
  kAdopt,        // its Firecracker runs and needs nothing of the old fcvmd: take it over
  kKill,         // kill its Firecracker, keep the record (stopped, with why)
  kDiscard,      // kill its Firecracker if any and remove the VM altogether
  kMarkStopped,  // its Firecracker is gone: record it as stopped
  kKeep,         // a stopped or failed VM's record: keep as is
};
const char* ReconcileActionName(ReconcileAction action);

struct ReconcileDecision {
  ReconcileAction action = ReconcileAction::kKeep;
  // What the record becomes (state, pid, error) for kKill / kMarkStopped.
  VmState state = VmState::kStopped;
  std::string error;
  // One line for the log and the kReconcile event.
  std::string message;
};

// `record` is the VM's record, or nullopt when its directory has none (or an
// unreadable one); `alive` says whether a Firecracker of this VM directory
// runs (its recorded pid, or one found by its API socket). For a live clone
// whose memory a page server served, `pages` says whether this fcvmd's page
// server took its session over (OK) or why it could not.
ReconcileDecision DecideReconcile(const std::string& vm_dir_name, const std::optional<VmInfo>& record,
                                  bool alive, const absl::Status& pages = absl::OkStatus());
// A clone whose memory the page server serves.
bool ServedByPageServer(const VmInfo& info);

}  // namespace fcvm::vm
