#pragma once

// Small file helpers with fcvm's error conventions.

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/base/cancel.h"

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

// Copies the data extents of `in` (SEEK_DATA/SEEK_HOLE, up to `size`) into
// `out` at the same offsets: holes are skipped, so they stay holes in a new
// file, and whatever `out` holds under them stays. copy_file_range where the
// file systems allow it, else through a buffer. Checks `cancel` between 16
// MiB chunks. `src` and `dst` name the files in errors.
absl::Status CopyDataExtents(int in, int out, off_t size, const std::string& src, const std::string& dst,
                             const CancelToken& cancel);

}  // namespace fcvm
