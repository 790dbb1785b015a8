#pragma once

// The suites of fcvm-clone-bench (--suite=latency,fanout,ksm,fork). Each prints
// its own table to stdout (or adds a JSON object to `json` with --json) and
// returns an error only when it cannot measure at all.

#include <string>

#include "absl/status/status.h"
#include "bench/clone/common.h"

namespace fcvm::bench {

// Single clones and one batch through fcvmd, UFFD and File, warm pool off
// and on (the original fcvm-clone-bench).
absl::Status RunLatencySuite(const Options& o, std::string* json);
// Batches of N clones through fcvmd against a bare driver (lib/firecracker,
// no fcvmd) restoring the same snapshot with the File backend at the same
// parallelism; idle guests at each --fanout-n, active ones at --active-n,
// 2 MiB guests (UFFD) at --huge-n; fcvmd's CPU time per clone.
absl::Status RunFanoutSuite(const Options& o, std::string* json);
// Density: total PSS of --ksm-n File clones, of as many UFFD clones, and of
// as many UFFD clones under fcvmd --ksm=manage once merging settled, with
// the time to settle and ksmd's CPU.
absl::Status RunKsmSuite(const Options& o, std::string* json);
// Live fork: the source's pause for a fork (a Diff snapshot) against a full
// snapshot's of the same VM in the same run, and fork latency against a full
// snapshot + clone; --runs runs.
absl::Status RunForkSuite(const Options& o, std::string* json);

}  // namespace fcvm::bench
