#pragma once

// The host's hugetlb page pool (default huge page size): what is in it, and
// a scoped reservation of more pages for tests and benchmarks.
//
// Guests with `"huge_pages": "2M"` take their memory from this pool; it has to
// be filled before they start (see docs/page-server.md, "Huge pages").

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace fcvm {

struct HugePagePool {
  uint64_t page_size = 0;  // bytes (Hugepagesize); 0 when the kernel has no hugetlb
  uint64_t total = 0;      // HugePages_Total
  uint64_t free = 0;       // HugePages_Free (includes reserved-but-unused pages)
  uint64_t reserved = 0;   // HugePages_Rsvd: promised to mappings, not yet faulted in
  uint64_t surplus = 0;    // HugePages_Surp
  // nr_overcommit_hugepages: how many surplus pages the kernel may add on
  // demand from free memory (0 unless an administrator allowed it). Only
  // ReadHugePagePoolOf fills it in.
  uint64_t overcommit = 0;

  // Pages a new mapping can still count on: free and not promised to another
  // mapping, plus the surplus the kernel may still add (which it can fail to
  // find when memory is short or fragmented).
  uint64_t available() const {
    uint64_t unpromised = free > reserved ? free - reserved : 0;
    return unpromised + (overcommit > surplus ? overcommit - surplus : 0);
  }
};

// Parses /proc/meminfo (the default huge page size). NotFound when the kernel
// reports no hugetlb pool.
absl::StatusOr<HugePagePool> ReadHugePagePool();

// The pool of `page_size`-byte pages, whatever the host's default size (a
// guest with "huge_pages": "2M" takes 2 MiB pages even where the default is
// 1 GiB): <sysfs_dir>/hugepages-<KiB>kB/{nr,free,resv,surplus,
// nr_overcommit}_hugepages. NotFound when the kernel has no pool of that size
// (no hugetlb, or the size is not supported); the read's error otherwise.
absl::StatusOr<HugePagePool> ReadHugePagePoolOf(uint64_t page_size,
                                                const std::string& sysfs_dir = "/sys/kernel/mm/hugepages");

// Adds `pages` pages of the default huge page size to the pool (writes
// /proc/sys/vm/nr_hugepages) for the lifetime of the object, and takes them
// out again on destruction. Changes are made relative to the value found at
// the time, under an flock shared by every fcvm process, so two users adding
// and removing pages at once each get their own back. Move-only.
//
// Errors: PermissionDenied without root; ResourceExhausted when the kernel
// could not find `pages` free huge pages (memory short or fragmented: the
// pages it did find are given back at once); NotFound without hugetlb.
class HugePageReservation {
 public:
  static absl::StatusOr<HugePageReservation> Add(uint64_t pages);
  HugePageReservation() = default;
  ~HugePageReservation();
  HugePageReservation(HugePageReservation&& other) noexcept;
  HugePageReservation& operator=(HugePageReservation&& other) noexcept;
  HugePageReservation(const HugePageReservation&) = delete;
  HugePageReservation& operator=(const HugePageReservation&) = delete;

  uint64_t pages() const { return pages_; }
  uint64_t page_size() const { return page_size_; }
  // Gives the pages back now (what the destructor does). OK when there is
  // nothing to give back.
  absl::Status Release();

 private:
  HugePageReservation(uint64_t pages, uint64_t page_size) : pages_(pages), page_size_(page_size) {}
  uint64_t pages_ = 0;
  uint64_t page_size_ = 0;
};

}  // namespace fcvm
