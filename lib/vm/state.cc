#include "lib/vm/state.h"

#include "absl/strings/str_cat.h"

namespace fcvm::vm {
namespace {

struct Transition {
  VmState from;
  VmState to;
};

// The whole lifecycle. Anything not listed is refused.
constexpr Transition kTransitions[] = {
    // Creation ends running, paused (snapshot loads with resume_vm=false, or
    // stay_paused clones), or failed.
    {VmState::kCreating, VmState::kRunning},
    {VmState::kCreating, VmState::kPaused},
    {VmState::kCreating, VmState::kFailed},
    {VmState::kCreating, VmState::kStopping},  // deleted while being created
    {VmState::kRunning, VmState::kPaused},
    {VmState::kPaused, VmState::kRunning},
    {VmState::kRunning, VmState::kStopping},
    {VmState::kPaused, VmState::kStopping},
    // Firecracker died on its own (crash, guest reboot, page server drop).
    {VmState::kRunning, VmState::kStopped},
    {VmState::kPaused, VmState::kStopped},
    {VmState::kRunning, VmState::kFailed},
    {VmState::kPaused, VmState::kFailed},
    {VmState::kStopping, VmState::kStopped},
    {VmState::kStopping, VmState::kFailed},
    // A stopped or failed VM can still be deleted (cleanup of its records).
    {VmState::kStopped, VmState::kStopping},
    {VmState::kFailed, VmState::kStopping},
};

}  // namespace

absl::string_view StateName(VmState state) {
  switch (state) {
    case VmState::kCreating:
      return "creating";
    case VmState::kRunning:
      return "running";
    case VmState::kPaused:
      return "paused";
    case VmState::kStopping:
      return "stopping";
    case VmState::kStopped:
      return "stopped";
    case VmState::kFailed:
      return "failed";
  }
  return "unknown";
}

bool ParseState(absl::string_view name, VmState* state) {
  for (VmState s : kAllStates) {
    if (StateName(s) == name) {
      *state = s;
      return true;
    }
  }
  return false;
}

bool CanTransition(VmState from, VmState to) {
  for (const Transition& t : kTransitions) {
    if (t.from == from && t.to == to) return true;
  }
  return false;
}

absl::Status CheckTransition(absl::string_view vm_id, VmState from, VmState to, absl::string_view verb) {
  if (CanTransition(from, to)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("vm ", vm_id, " is ", StateName(from), "; cannot ", verb));
}

}  // namespace fcvm::vm
