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
};

// Parses /proc/meminfo. NotFound when the kernel reports no hugetlb pool.
absl::StatusOr<HugePagePool> ReadHugePagePool();

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
