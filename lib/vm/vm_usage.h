#pragma once

// Per-VM resource usage (internal to lib/vm; Manager::Usage is the way in):
// CPU time and memory of each VM's Firecracker from /proc, page faults from
// the page server's per-listener counters, uptime from the VM's timings.
//
// Cost (docs/operations.md has the measurement): /proc/<pid>/stat is one small
// read per VM; smaps_rollup (PSS) walks the process's page tables, which is
// why it is only read when asked for.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/vm/env.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

struct Core;

// The "Pss:" line of /proc/<pid>/smaps_rollup, in bytes. InvalidArgument
// when there is none or it does not parse.
absl::StatusOr<uint64_t> ParseSmapsRollupPss(absl::string_view text);

// The real reader behind Host::ReadProcessUsage: /proc/<pid>/stat (and
// smaps_rollup with `pss`). NotFound when the process is gone.
absl::StatusOr<ProcessUsage> ReadProcProcessUsage(pid_t pid, bool pss);

// Manager::Usage.
std::map<std::string, VmUsage> CollectUsage(Core& core, const std::vector<std::string>& ids, bool pss);

}  // namespace fcvm::vm
