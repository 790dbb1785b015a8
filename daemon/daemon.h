#pragma once

// fcvmd's top-level object: owns the VM manager, the worker pool that runs
// its blocking operations, and the gRPC server on its Unix socket with the
// services behind it. main.cc only parses flags, sets up logging and signals,
// and drives Start/Shutdown; everything here is reachable from tests.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/cancel.h"
#include "lib/base/ksm.h"
#include "lib/vm/manager_options.h"

namespace grpc {
class Server;
}

namespace fcvm::vm {
class Manager;
}  // namespace fcvm::vm

namespace fcvm::metrics {
class CallbackHandle;
class MetricsServer;
class Registry;
}  // namespace fcvm::metrics

namespace fcvm::daemon {

class CallTracker;
class EventHub;
class RequestCache;
class WorkerPool;

// What fcvmd does about KSM (kernel samepage merging) for its VMs; see
// docs/operations.md, "Memory merging".
enum class KsmMode {
  kOff,     // nothing
  kMerge,   // every Firecracker it starts has its memory mergeable; ksmd is the host's business
  kManage,  // kMerge, and fcvmd runs ksmd with its own rates while it runs, then puts them back
};

struct DaemonOptions {
  // gRPC endpoint: a Unix socket path. Its directory is created if missing.
  std::string socket_path = "/run/fcvm/fcvmd.sock";
  // Mode of the socket file: who may talk to fcvmd (root and the socket's
  // group by default). Whoever can is root-equivalent on this host.
  int socket_mode = 0660;
  // Every Firecracker runs under the jailer (manager.jailer_bin): the one
  // given here, else "jailer" beside the Firecracker binary. Without one,
  // Start fails unless `no_jailer` (development only: Firecracker then runs
  // as root, and fcvmd logs a warning).
  std::string jailer_bin;
  bool no_jailer = false;
  // Threads running blocking operations (most of their time is spent waiting
  // for Firecracker and disks, hence more than cores).
  int workers = 16;
  // KSM. kManage writes /sys/kernel/mm/ksm/{run,pages_to_scan,
  // sleep_millisecs} (run 1 and these rates) at Start and puts back the
  // values it found at Shutdown (each unless somebody changed it meanwhile).
  KsmMode ksm = KsmMode::kOff;
  uint64_t ksm_pages_to_scan = 1000;
  uint64_t ksm_sleep_millisecs = 20;
  // Prometheus metrics endpoint (docs/operations.md lists the metrics): a
  // loopback TCP address ("127.0.0.1:9810"; port 0 picks one, see the log) or
  // a Unix socket path ("unix:/run/fcvm/metrics.sock"); empty = off. A TCP
  // address that is not loopback is refused unless allowed: the endpoint has
  // no authentication and no TLS.
  std::string metrics_address;
  bool metrics_allow_non_loopback = false;
  // VMs, snapshots, clones, the page server, networks (state_dir relative to
  // fcvmd's working directory is made absolute by Start).
  vm::ManagerOptions manager;
};

class Daemon {
 public:
  // Validates options, prepares the state directory, creates the VM manager
  // (which reconciles what a previous fcvmd left) and starts serving.
  // FailedPrecondition when another fcvmd already answers on the socket;
  // InvalidArgument for unusable paths or sizes; the Manager's own error when
  // it cannot be created.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();

  // Stops accepting calls, ends every WatchEvents stream and cancels every
  // call's work (the Manager undoes what it made: clones mid-creation are
  // deleted, disk copies stop), lets calls finish for up to `grace`, answers
  // the rest UNAVAILABLE "fcvmd is shutting down", stops the gRPC server and
  // removes the socket file, then waits for the workers and destroys the
  // manager. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  const DaemonOptions& options() const { return options_; }
  // Version string of the configured Firecracker ("1.14.2"), empty if unknown.
  const std::string& firecracker_version() const { return firecracker_version_; }
  // Every metric fcvmd exports (served at metrics_address when given).
  const metrics::Registry& metrics() const { return *metrics_; }
  // Where the metrics endpoint listens ("127.0.0.1:41234", "unix:/path");
  // empty when off.
  std::string metrics_endpoint() const;

 private:
  struct Services;
  explicit Daemon(DaemonOptions options);

  DaemonOptions options_;
  std::string firecracker_version_;
  absl::Time started_at_;
  // Destroyed in reverse order; Shutdown already stopped everything in the
  // right order (metrics endpoint, server, pool, manager). The registry goes
  // last: the manager and the gRPC interceptor update it until they are gone.
  std::unique_ptr<metrics::Registry> metrics_;
  std::vector<metrics::CallbackHandle> metric_handles_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  CancelSource shutdown_;
  std::unique_ptr<vm::Manager> manager_;
  std::shared_ptr<EventHub> events_;
  std::unique_ptr<RequestCache> cache_;
  std::unique_ptr<CallTracker> calls_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  // KSM settings fcvmd changed (--ksm=manage), put back at Shutdown.
  KsmControl ksm_;
  bool shut_down_ = false;
};

}  // namespace fcvm::daemon
