#pragma once

// The VM state machine: every transition fcvm makes is checked against one
// table (kTransitions in state.cc), and a test walks all pairs.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fcvm::vm {

// Mirrors fcvm.v1.VmState (daemon/ converts).
enum class VmState {
  kCreating,  // resources being prepared, Firecracker starting or loading
  kRunning,   // vCPUs running
  kPaused,    // vCPUs paused
  kStopping,  // being stopped and cleaned up
  kStopped,   // Firecracker exited; resources released
  kFailed,    // something went wrong; resources released
};

inline constexpr VmState kAllStates[] = {VmState::kCreating, VmState::kRunning, VmState::kPaused,
                                         VmState::kStopping, VmState::kStopped, VmState::kFailed};

absl::string_view StateName(VmState state);  // "running"
bool ParseState(absl::string_view name, VmState* state);

// True when `from` -> `to` is allowed.
bool CanTransition(VmState from, VmState to);

// OK, or FailedPrecondition "vm <id> is <from>; cannot <verb>" (the caller's
// words for what it tried), so that gRPC callers get the right code.
absl::Status CheckTransition(absl::string_view vm_id, VmState from, VmState to, absl::string_view verb);

}  // namespace fcvm::vm
