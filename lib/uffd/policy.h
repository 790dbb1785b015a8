#pragma once

// What the page server does with a snapshot's working set for one clone: the
// one vocabulary for prefetch policies, used by lib/uffd, lib/vm, fcvmd and
// fcvm-pager alike.

#include "absl/strings/string_view.h"

namespace fcvm::uffd {

enum class ClonePolicy {
  kNone,      // serve faults only
  kRecord,    // write the pages this clone touches, first-touch order, to the working-set file
  kPrefetch,  // install the recorded working set right after the handshake
  kAuto,      // prefetch if a working set exists, else record (one recorder per snapshot)
};

const char* ClonePolicyName(ClonePolicy policy);  // "none", "record", "prefetch", "auto"
// The inverse of ClonePolicyName; false for an unknown name.
bool ParseClonePolicy(absl::string_view name, ClonePolicy* policy);

}  // namespace fcvm::uffd
