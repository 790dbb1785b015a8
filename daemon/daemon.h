#pragma once

// fcvmd's top-level object: owns the gRPC server on its Unix socket and the
// services behind it. main.cc only parses flags, sets up logging and signals,
// and drives Start/Shutdown; everything here is reachable from tests.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
}

namespace fcvm::daemon {

struct DaemonOptions {
  // gRPC endpoint: a Unix socket path. Its directory is created if missing.
  std::string socket_path = "/run/fcvm/fcvmd.sock";
  // Mode of the socket file: who may talk to fcvmd (root and the socket's
  // group by default).
  int socket_mode = 0660;
  // Where VMs, snapshots and the daemon's records live.
  std::string state_dir = "/var/lib/fcvm";
  // Firecracker and (optional) jailer binaries.
  std::string firecracker_bin;
  std::string jailer_bin;
};

class Daemon {
 public:
  // Validates options, prepares the state directory and starts serving.
  // FailedPrecondition when another fcvmd already answers on the socket;
  // InvalidArgument for unusable paths.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();

  // Stops accepting calls, lets running ones finish for up to `grace`, cancels
  // the rest, and removes the socket file. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  const DaemonOptions& options() const { return options_; }
  // Version string of the configured Firecracker ("1.14.2"), empty if unknown.
  const std::string& firecracker_version() const { return firecracker_version_; }

 private:
  struct Services;
  explicit Daemon(DaemonOptions options);

  DaemonOptions options_;
  std::string firecracker_version_;
  absl::Time started_at_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace fcvm::daemon
