#pragma once

// Copy-on-write disk copies for VMs and snapshots.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/base/cancel.h"

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

struct CopyOptions {
  bool durable = true;
  // Mode of the copy; -1 keeps the source's permission bits.
  int mode = -1;
  // Checked before the copy and between 16 MiB chunks; a cancelled copy
  // returns the token's status and removes `dst`.
  CancelToken cancel;
};
absl::StatusOr<CopyMethod> CopyDisk(const std::string& src, const std::string& dst,
                                    const CopyOptions& options);

// Bytes free for writing in the file system holding `path` (statvfs: blocks
// available to unprivileged users, so the root reserve stays untouched).
absl::StatusOr<uint64_t> FreeBytes(const std::string& path);

// Bytes `path` occupies on disk (st_blocks): what a sparse copy of it needs.
absl::StatusOr<uint64_t> AllocatedBytes(const std::string& path);

// ResourceExhausted, naming `what`, `dir`, the need and what is free, when the
// file system holding `dir` has less than `need` bytes plus a 16 MiB reserve
// free. OK when it cannot tell (statvfs failed): the write then reports.
absl::Status CheckFreeSpace(const std::string& dir, uint64_t need, absl::string_view what);

// True when files in `dir` can be reflinked (probed with two scratch files
// that are removed again): private disk copies then take no space up front.
bool SupportsReflink(const std::string& dir);

}  // namespace fcvm::storage
