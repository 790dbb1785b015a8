#pragma once

// Copy-on-write disk copies for VMs and snapshots.

#include <string>

#include "absl/status/statusor.h"

namespace fcvm::storage {

enum class CopyMethod {
  kReflink,     // FICLONE: shares blocks until written (btrfs, xfs, ...)
  kSparseCopy,  // copy_file_range over data extents only; holes stay holes
};

const char* CopyMethodName(CopyMethod method);

// Copies `src` to a new file `dst` (which must not exist), by reflink where
// the file system can, else as a sparse copy. With `durable` the copy is
// fsynced (snapshots); a running VM's private copy need not be. On error
// `dst` does not exist. NotFound for a missing `src` (naming it);
// AlreadyExists for an existing `dst`; ResourceExhausted when the disk is full.
absl::StatusOr<CopyMethod> CopyDisk(const std::string& src, const std::string& dst, bool durable = true);

}  // namespace fcvm::storage
