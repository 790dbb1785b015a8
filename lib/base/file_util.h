#pragma once

// Small file helpers with fcvm's error conventions.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fcvm {

// Whole file as a string. NotFound when it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same
// directory, rename over `path`. A crash of the process leaves either the old
// or the new contents, never a mix. With `durable` (the default) the file and
// the directory are also fsynced, so the same holds across a power loss;
// records that mean nothing after a host reboot (running VMs) skip that cost.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents, int mode = 0644,
                             bool durable = true);

// mkdir -p with `mode` for the directories it creates.
absl::Status MakeDirs(const std::string& path, int mode = 0755);

// rm -rf: removes `path` and everything below it, never following symlinks
// and never crossing into another mounted file system. OK if `path` does not
// exist.
absl::Status RemoveTree(const std::string& path);

}  // namespace fcvm
