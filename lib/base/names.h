#pragma once

// Names and ids of the things fcvm manages (VMs, snapshots).

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fcvm {

// A user-chosen name: 1-64 bytes of [A-Za-z0-9._-], not "." or "..", so it is
// safe as a path component and in a network device or namespace name.
// InvalidArgument naming `kind` ("vm name", "snapshot name") and the problem.
absl::Status ValidateName(absl::string_view kind, absl::string_view name);

// A fresh id: prefix + "-" + 12 random hex digits ("vm-3fa85f64c2a1").
std::string NewId(absl::string_view prefix);

}  // namespace fcvm
