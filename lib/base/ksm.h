#pragma once

// The host's KSM daemon (kernel samepage merging, /sys/kernel/mm/ksm): what it
// is doing, and scoped changes to its settings that are put back.
//
// KSM merges identical anonymous pages of mappings marked mergeable into one
// copy-on-write page. A process started with SpawnOptions::memory_merge has
// all of its anonymous memory marked; ksmd does the merging in the
// background, `pages_to_scan` pages every `sleep_millisecs` ms, while `run`
// is 1. fcvmd changes these only with --ksm=manage (docs/operations.md).
//
// Thread-compatible: one KsmControl is used by one thread at a time.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fcvm {

inline constexpr char kKsmDir[] = "/sys/kernel/mm/ksm";

struct KsmStatus {
  uint64_t run = 0;  // 0 stopped, 1 running, 2 unmerging everything
  uint64_t pages_to_scan = 0;
  uint64_t sleep_millisecs = 0;
  uint64_t pages_shared = 0;    // merged pages in use (one copy each)
  uint64_t pages_sharing = 0;   // mappings of them beyond the first: pages saved
  uint64_t pages_unshared = 0;  // unique pages ksmd keeps checking
  uint64_t pages_volatile = 0;  // pages changing too fast to merge
  uint64_t full_scans = 0;      // passes over all mergeable memory so far
};

// NotFound when the kernel has no KSM (`dir` missing); the read's error, or
// Internal for a file that does not hold a number.
absl::StatusOr<KsmStatus> ReadKsm(const std::string& dir = kKsmDir);

// Settings to change; unset ones are left alone.
struct KsmSettings {
  std::optional<uint64_t> run;  // 0 or 1 (2, unmerge everything, is refused)
  std::optional<uint64_t> pages_to_scan;
  std::optional<uint64_t> sleep_millisecs;
};

// Writes settings for its lifetime and writes back, on Restore() or
// destruction, the values it found, each only where the setting still holds
// what this object wrote (a change somebody made meanwhile wins). Move-only.
//
// Errors of Apply: InvalidArgument for run > 1; NotFound without KSM;
// PermissionDenied without root; the write's error (naming the file). A
// failed Apply has put back what it had already changed.
class KsmControl {
 public:
  static absl::StatusOr<KsmControl> Apply(const KsmSettings& settings, const std::string& dir = kKsmDir);
  KsmControl() = default;
  ~KsmControl();
  KsmControl(KsmControl&& other) noexcept;
  KsmControl& operator=(KsmControl&& other) noexcept;
  KsmControl(const KsmControl&) = delete;
  KsmControl& operator=(const KsmControl&) = delete;

  // What Apply changed, as "name: old -> new" (for the log).
  std::vector<std::string> Describe() const;
  // Puts the old values back; OK when there is nothing to put back. The
  // first error is returned; every setting is tried.
  absl::Status Restore();

 private:
  struct Change {
    std::string name;
    uint64_t before = 0;
    uint64_t after = 0;
  };
  KsmControl(std::string dir, std::vector<Change> changes)
      : dir_(std::move(dir)), changes_(std::move(changes)) {}

  std::string dir_;
  std::vector<Change> changes_;  // in the order applied; restored in reverse
};

}  // namespace fcvm
