#pragma once

// Metrics of the calling process, read from /proc/self at scrape time, under
// the names Prometheus' own client libraries use:
//
//   process_cpu_seconds_total        counter  user + system CPU time
//   process_open_fds                 gauge    open file descriptors
//   process_max_fds                  gauge    RLIMIT_NOFILE soft limit
//   process_resident_memory_bytes    gauge    resident set size
//   process_virtual_memory_bytes     gauge    virtual memory size
//   process_start_time_seconds       gauge    start time, seconds since the Unix epoch
//   process_threads                  gauge    threads
//
// A value that cannot be read at a scrape (an unexpected /proc) is left out of
// that scrape rather than reported as 0.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/metrics/registry.h"

namespace fcvm::metrics {

// The fields of /proc/<pid>/stat that the metrics use.
struct ProcStat {
  uint64_t utime_ticks = 0;
  uint64_t stime_ticks = 0;
  int64_t num_threads = 0;
  uint64_t start_ticks = 0;  // after boot
  uint64_t vsize_bytes = 0;
  int64_t rss_pages = 0;
};

// Parses the contents of /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from its last ')'.
// InvalidArgument when the text does not have the expected fields.
absl::StatusOr<ProcStat> ParseProcStat(absl::string_view text);

// "btime" of /proc/stat: boot time, seconds since the Unix epoch.
absl::StatusOr<int64_t> ParseBootTime(absl::string_view proc_stat_text);

// Open fds of this process (entries of /proc/self/fd, not counting the one
// used to read it).
absl::StatusOr<int64_t> CountOpenFds();

// Registers the families above in `registry`. The handles keep them
// registered; they must not outlive the registry. Errors: the registry's
// (AlreadyExists when they are registered already).
absl::StatusOr<std::vector<CallbackHandle>> AddProcessMetrics(Registry& registry);

}  // namespace fcvm::metrics
