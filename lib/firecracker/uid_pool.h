#pragma once

// Leases of the uids/gids jailed Firecracker processes run as.
//
// Each jailed VM runs as its own uid and gid (the same number), so that one
// escaped VMM cannot read or signal another VM's process or files. The pool
// hands out numbers from a configured range and records every lease in one
// JSON file (written atomically, before Lease returns), so a restarted fcvmd
// never gives a live VM's id to another: it re-opens the file and calls
// Reconcile with the VMs it still has.
//
// Ids are handed out next-fit (the search starts after the last id leased and
// wraps around), so a released id is reused as late as possible: files a
// VM's uid still owns somewhere (a snapshot not yet chowned, a chroot not yet
// removed) are not handed to a new VM at once.
//
// The default range, 65,536 ids from 1,879,048,192 (0x70000000), lies just
// above systemd's container range (524,288..1,879,048,191, which
// systemd-nspawn and user-namespaced containers allocate from) and below
// 2^31; regular users, system users and /etc/subuid ranges conventionally sit
// far lower. No name is needed in /etc/passwd.
//
// The file is locked (flock on "<path>.lock") for the pool's lifetime:
// FailedPrecondition when another UidPool, in this or another process, holds
// it. Writes are not fsynced: after a host reboot no VM runs and Reconcile
// drops every lease anyway.
//
// Thread-safety: all methods may be called from any thread.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {

inline constexpr uint32_t kDefaultUidBase = 0x70000000;  // 1,879,048,192
inline constexpr uint32_t kDefaultUidCount = 65536;

struct UidRange {
  uint32_t base = kDefaultUidBase;
  uint32_t count = kDefaultUidCount;
};

class UidPool {
 public:
  // Opens (or creates, on first Lease) the lease file at `path` for `range`.
  // InvalidArgument for an empty range, one that includes 0 (root) or reaches
  // 65534 (nobody) / 4294967295 ((uid_t)-1); DataLoss when the file cannot be
  // parsed; FailedPrecondition when it holds leases outside `range` (shrinking
  // the range under live VMs would hand out their ids twice) or when another
  // pool holds the lock.
  static absl::StatusOr<std::unique_ptr<UidPool>> Open(std::string path, UidRange range = {});

  // The id `owner` (a VM id) holds, leasing the next free one if it holds
  // none; persisted before it returns. ResourceExhausted when every id of the
  // range is leased.
  absl::StatusOr<uint32_t> Lease(const std::string& owner);

  // Ends `owner`'s lease (persisted). OK when it holds none.
  absl::Status Release(const std::string& owner);

  // NotFound when `owner` holds no lease.
  absl::StatusOr<uint32_t> Lookup(const std::string& owner) const;

  // owner -> id.
  std::map<std::string, uint32_t> All() const;

  // Drops the leases of owners not in `live` (VMs that no longer exist) and
  // returns those owners, sorted.
  absl::StatusOr<std::vector<std::string>> Reconcile(const std::set<std::string>& live);

  const UidRange& range() const { return range_; }
  const std::string& path() const { return path_; }

 private:
  UidPool(std::string path, UidRange range) : path_(std::move(path)), range_(range) {}
  absl::Status Load();
  absl::Status Persist() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const UidRange range_;
  UniqueFd lock_;

  mutable absl::Mutex mu_;
  std::map<std::string, uint32_t> by_owner_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::string> by_id_ ABSL_GUARDED_BY(mu_);
  // Offset in the range where the next search starts.
  uint32_t next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fcvm::firecracker
