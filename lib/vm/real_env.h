#pragma once

// The real Env: Firecracker through lib/firecracker, the page server of
// lib/uffd, networks of lib/net, disks through lib/storage. Tested by the
// integration and e2e suites (the unit tests use fakes).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/vm/env.h"

namespace fcvm::vm {

struct RealEnvOptions {
  std::string state_dir;
  std::string firecracker_bin;  // empty: no VMM factory (VM operations Unavailable)
  // The jailer; empty runs Firecracker unjailed (as root: development only).
  std::string jailer_bin;
  // Chroots go to <jail_dir>/firecracker/<vm id>/root; put it on the file
  // system of the state directory (files are hard-linked in).
  std::string jail_dir;
  // Parent cgroup of every VM's cgroup.
  std::string parent_cgroup = "fcvm";
  int page_server_threads = 0;
  absl::Duration start_timeout = absl::Seconds(30);
  size_t console_max_bytes = 1 << 20;
  bool networking = true;
  std::string network_pool;
  std::string network_prefix;
  std::string network_uplink;
};

// Errors: the Firecracker and jailer binaries' probes, the page server's
// creation. A network that cannot be set up is not an error:
// NetworkService::Available then says why.
absl::StatusOr<Env> CreateRealEnv(const RealEnvOptions& options);

}  // namespace fcvm::vm
