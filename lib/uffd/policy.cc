#include "lib/uffd/policy.h"

namespace fcvm::uffd {

namespace {
constexpr ClonePolicy kAll[] = {ClonePolicy::kNone, ClonePolicy::kRecord, ClonePolicy::kPrefetch,
                                ClonePolicy::kAuto};
}  // namespace

const char* ClonePolicyName(ClonePolicy p) {
  switch (p) {
    case ClonePolicy::kNone:
      return "none";
    case ClonePolicy::kRecord:
      return "record";
    case ClonePolicy::kPrefetch:
      return "prefetch";
    case ClonePolicy::kAuto:
      return "auto";
  }
  return "?";
}

bool ParseClonePolicy(absl::string_view name, ClonePolicy* policy) {
  for (ClonePolicy p : kAll) {
    if (name == ClonePolicyName(p)) {
      *policy = p;
      return true;
    }
  }
  return false;
}

}  // namespace fcvm::uffd
