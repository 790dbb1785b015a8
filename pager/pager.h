#pragma once

// fcvm-pager: the page server as a standalone command, for teams that run
// Firecracker with their own orchestration. Same engine as fcvmd (lib/uffd).
// main.cc is only signal set-up around Run().

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/uffd/page_server.h"

namespace fcvm::pager {

struct SnapshotArg {
  std::string name;  // "default" for the positional SOCKET MEMFILE form
  std::string mem_file;
  std::string socket;
};

struct PagerConfig {
  std::vector<SnapshotArg> snapshots;
  uint64_t fault_around_bytes = uffd::kDefaultFaultAroundBytes;
  bool zero_elision = true;
  uffd::ClonePolicy policy = uffd::ClonePolicy::kNone;
  // Working-set file; empty = "<memfile>.wset". Only with one snapshot.
  std::string working_set;
  int threads = 0;
  absl::Duration handshake_timeout = absl::Seconds(5);
  uffd::FailurePolicy on_bad_peer = uffd::FailurePolicy::kKill;
  std::string log_level = "info";
  absl::Duration stats_interval = absl::ZeroDuration();
  bool once = false;
};

// Parses the command line (without argv[0]). InvalidArgument names the
// offending argument. Sets *help (and returns the help text in
// *help_text) for --help.
absl::StatusOr<PagerConfig> ParseArgs(const std::vector<std::string>& args, bool* help,
                                      std::string* help_text);

// Serves until `stop_fd` is readable (a signalfd for SIGTERM/SIGINT), or with
// --once until its one connection ends. Prints one line per connection event
// and a summary to `out`. Returns the exit code: 0, or 1 when serving could
// not start or (--once) the connection was refused or failed.
int Run(const PagerConfig& config, int stop_fd, std::ostream& out);

}  // namespace fcvm::pager
