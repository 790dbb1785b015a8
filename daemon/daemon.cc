#include "daemon/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/calls.h"
#include "daemon/event_hub.h"
#include "daemon/grpc_metrics.h"
#include "daemon/request_cache.h"
#include "daemon/services.h"
#include "daemon/worker_pool.h"
#include "fcvm/v1/wire.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"
#include "lib/metrics/http_server.h"
#include "lib/metrics/process_metrics.h"
#include "lib/metrics/registry.h"
#include "lib/vm/manager.h"
#include "spdlog/spdlog.h"

#ifndef FCVM_VERSION
#define FCVM_VERSION "0.0.0"
#endif

namespace fcvm::daemon {
namespace {

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Refuses to steal the socket of a live fcvmd; removes a stale one.
absl::Status ClaimSocketPath(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(absl::StrCat("stat ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path ", path, " exists and is not a socket"));
  }
  if (ConnectUnix(path).ok()) {
    return absl::FailedPreconditionError(absl::StrCat("another fcvmd is already serving on ", path,
                                                      "; stop it first or pick another --socket"));
  }
  if (unlink(path.c_str()) < 0 && errno != ENOENT)
    return ErrnoError(absl::StrCat("remove stale socket ", path));
  return absl::OkStatus();
}

// The jailer fcvmd runs every Firecracker under: --jailer, else "jailer"
// beside the Firecracker binary. None found is an error unless --no-jailer
// (then "": Firecracker runs as root, which only development should do).
absl::StatusOr<std::string> ChooseJailer(const DaemonOptions& options) {
  const std::string& firecracker = options.manager.firecracker_bin;
  if (options.no_jailer) {
    if (!options.jailer_bin.empty()) return absl::InvalidArgumentError("--jailer and --no-jailer contradict");
    if (!firecracker.empty()) {
      spdlog::warn(
          "--no-jailer: every Firecracker runs as root in fcvmd's namespaces, confined only by its own "
          "seccomp "
          "filter; use it for development only (docs/security.md)");
    }
    return std::string();
  }
  // A Firecracker that is not there is reported as such by the manager.
  if (!options.jailer_bin.empty() || firecracker.empty() || access(firecracker.c_str(), X_OK) != 0) {
    return options.jailer_bin;
  }
  std::string beside = DirName(firecracker) + "/jailer";
  if (access(beside.c_str(), X_OK) == 0) return beside;
  return absl::FailedPreconditionError(
      absl::StrCat("no jailer: ", beside,
                   " is not an executable; put Firecracker's jailer (1.7 or later) there, "
                   "give it with --jailer PATH, or run with --no-jailer (Firecracker then runs as root: "
                   "development only)"));
}

// The Manager wants an absolute state directory; a relative --state-dir is
// taken relative to fcvmd's working directory.
absl::StatusOr<std::string> Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return ErrnoError("getcwd");
  return absl::StrCat(cwd, "/", path);
}

}  // namespace

struct Daemon::Services {
  Services(SystemInfo info, const ServiceDeps& deps)
      : system(std::move(info), deps), vm(deps), snapshot(deps) {}
  SystemServiceImpl system;
  VmServiceImpl vm;
  SnapshotServiceImpl snapshot;
};

// Checked before anything is created: a bad flag must not cost a reconcile.
absl::Status CheckMetricsAddress(const DaemonOptions& options) {
  if (options.metrics_address.empty()) return absl::OkStatus();
  absl::StatusOr<metrics::ListenAddress> address = metrics::ParseListenAddress(options.metrics_address);
  if (!address.ok()) return Annotate(address.status(), "--metrics-address");
  if (address->kind == metrics::ListenAddress::Kind::kTcp && !address->loopback &&
      !options.metrics_allow_non_loopback) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-address ", options.metrics_address,
        " is not a loopback address; the endpoint has no authentication or TLS, so publishing it needs "
        "--metrics-allow-non-loopback (see docs/metrics.md)"));
  }
  return absl::OkStatus();
}

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

std::string Daemon::metrics_endpoint() const {
  return metrics_server_ != nullptr ? metrics_server_->address().ToString() : "";
}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  if (options.socket_path.empty() || options.socket_path.size() > 107) {
    return absl::InvalidArgumentError(
        absl::StrCat("--socket must be 1-107 bytes (a Unix socket path), got '", options.socket_path, "'"));
  }

  if (options.workers < 1 || options.workers > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--workers must be 1-1024, got ", options.workers));
  }
  const vm::ManagerOptions& m = options.manager;
  if (m.page_server_threads < 0 || m.page_server_threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--page-server-threads must be 0-256 (0 = one per core), got ", m.page_server_threads));
  }
  if (m.default_clone_parallelism < 1 || m.default_clone_parallelism > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--clone-parallelism must be 1-1024, got ", m.default_clone_parallelism));
  }
  if (m.warm_pool_size > 256) {
    return absl::InvalidArgumentError(absl::StrCat("--warm-pool must be 0-256, got ", m.warm_pool_size));
  }
  if (m.state_dir.empty()) return absl::InvalidArgumentError("--state-dir must not be empty");
  RETURN_IF_ERROR(CheckMetricsAddress(options));
  ASSIGN_OR_RETURN(std::string state_dir, Absolute(options.manager.state_dir));
  RETURN_IF_ERROR(Annotate(MakeDirs(DirName(options.socket_path), 0755), "socket directory"));
  RETURN_IF_ERROR(Annotate(MakeDirs(state_dir, 0700), "state directory"));
  // Before the manager: it reconciles the state directory, which must not
  // happen under a live fcvmd's feet.
  RETURN_IF_ERROR(ClaimSocketPath(options.socket_path));

  if (options.ksm != KsmMode::kOff) {
    // Checked here: otherwise every Firecracker launch would fail on it.
    if (absl::Status st = MemoryMergeSupported(); !st.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("--ksm: ", st.message()));
    }
  }
  if (options.ksm == KsmMode::kManage &&
      (options.ksm_pages_to_scan < 1 || options.ksm_pages_to_scan > 1000000 ||
       options.ksm_sleep_millisecs < 1 || options.ksm_sleep_millisecs > 60000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ksm-pages-to-scan must be 1-1000000 and --ksm-sleep-ms 1-60000, got ",
                     options.ksm_pages_to_scan, " and ", options.ksm_sleep_millisecs));
  }

  std::unique_ptr<Daemon> daemon(new Daemon(options));
  daemon->options_.manager.state_dir = state_dir;
  ASSIGN_OR_RETURN(daemon->options_.manager.jailer_bin, ChooseJailer(options));
  daemon->options_.manager.memory_merge = options.ksm != KsmMode::kOff;
  if (options.ksm == KsmMode::kManage) {
    ASSIGN_OR_RETURN(daemon->ksm_, KsmControl::Apply({.run = 1,
                                                      .pages_to_scan = options.ksm_pages_to_scan,
                                                      .sleep_millisecs = options.ksm_sleep_millisecs}));
    std::vector<std::string> changed = daemon->ksm_.Describe();
    spdlog::info("ksm: {}",
                 changed.empty() ? std::string("already set as asked") : absl::StrJoin(changed, ", "));
  }
  daemon->started_at_ = absl::Now();
  daemon->metrics_ = std::make_unique<metrics::Registry>();
  metrics::Registry& registry = *daemon->metrics_;
  daemon->options_.manager.metrics_registry = &registry;
  ASSIGN_OR_RETURN(daemon->manager_, vm::Manager::Create(daemon->options_.manager));
  daemon->firecracker_version_ = daemon->manager_->firecracker_version();
  ASSIGN_OR_RETURN(daemon->metric_handles_, metrics::AddProcessMetrics(registry));
  ASSIGN_OR_RETURN(metrics::GaugeFamily * build,
                   registry.AddGaugeFamily({.name = "fcvm_build_info",
                                            .help = "Always 1: the versions of fcvmd and of its Firecracker.",
                                            .labels = {"version", "firecracker_version"}}));
  build->WithLabels({FCVM_VERSION, daemon->firecracker_version_}).Set(1);
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> grpc_metrics,
                   MakeGrpcMetrics(registry, {"fcvm.v1.SystemService", "fcvm.v1.VmService",
                                              "fcvm.v1.SnapshotService", "grpc.health.v1.Health"}));
  vm::Manager* manager = daemon->manager_.get();
  daemon->events_ = std::make_shared<EventHub>(
      [manager](std::function<void(const vm::Event&)> callback, std::optional<uint64_t> replay_after) {
        return manager->Subscribe(std::move(callback), replay_after);
      },
      [manager](uint64_t token) { manager->Unsubscribe(token); });
  RequestCache::Options cache;
  cache.path = daemon->options_.manager.state_dir + "/request-ids";
  daemon->cache_ = std::make_unique<RequestCache>(cache);
  if (absl::Status st = daemon->cache_->Load(); !st.ok()) {
    spdlog::warn("client_request_id answers of the previous fcvmd are lost: {}", st);
  }
  daemon->calls_ = std::make_unique<CallTracker>();
  daemon->pool_ = std::make_unique<WorkerPool>(options.workers);
  ServiceDeps deps{manager,
                   daemon->shutdown_.token(),
                   daemon->pool_.get(),
                   daemon->cache_.get(),
                   daemon->calls_.get(),
                   daemon->events_};
  daemon->services_ = std::make_unique<Services>(
      SystemInfo{FCVM_VERSION, options.manager.firecracker_bin, daemon->firecracker_version_,
                 daemon->started_at_, manager->isolation()},
      deps);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", options.socket_path), grpc::InsecureServerCredentials());
  // Both limits on purpose (fcvm/v1/wire.h): requests are small and bounded;
  // the largest answer (1,024 clones) is about 20 MiB.
  builder.SetMaxReceiveMessageSize(v1::kMaxRequestBytes);
  builder.SetMaxSendMessageSize(v1::kMaxResponseBytes);
  builder.RegisterService(&daemon->services_->system);
  builder.RegisterService(&daemon->services_->vm);
  builder.RegisterService(&daemon->services_->snapshot);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::move(grpc_metrics));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  // The metrics endpoint before the gRPC socket: a taken port fails the start
  // before any client is served.
  if (!options.metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> server = metrics::MetricsServer::Start(
        &registry,
        {.address = options.metrics_address, .allow_non_loopback = options.metrics_allow_non_loopback});
    if (!server.ok()) return Annotate(server.status(), "--metrics-address");
    daemon->metrics_server_ = *std::move(server);
  }
  // gRPC creates the socket file itself, with fcvmd's umask (027, set by
  // main before any thread: the manager's threads create files already, so
  // the umask is not changed here): born without write permission for the
  // group and others, so no client can connect before the chmod below
  // widens it to socket_mode.
  daemon->server_ = builder.BuildAndStart();
  if (daemon->server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on unix:", options.socket_path,
                                               " (see the log above for gRPC's reason)"));
  }
  if (chmod(options.socket_path.c_str(), static_cast<mode_t>(options.socket_mode)) < 0) {
    absl::Status st = ErrnoError(absl::StrCat("chmod ", options.socket_path));
    daemon->Shutdown(absl::ZeroDuration());
    return st;
  }
  daemon->server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("fcvmd {} serving on unix:{} (state {}, firecracker {} {}, {} workers)", FCVM_VERSION,
               options.socket_path, state_dir,
               options.manager.firecracker_bin.empty() ? "<not configured>" : options.manager.firecracker_bin,
               daemon->firecracker_version_, options.workers);
  if (daemon->metrics_server_ != nullptr) {
    spdlog::info("metrics on {} (GET /metrics)", daemon->metrics_server_->address().ToString());
  }
  return daemon;
}

void Daemon::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  absl::Time deadline = absl::Now() + grace;
  // First: a scrape must not run while the rest goes away.
  if (metrics_server_ != nullptr) metrics_server_->Stop();
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    // New unary calls and streams are answered UNAVAILABLE from here on;
    // open streams end now (gRPC's Shutdown would wait for them forever).
    calls_->StartShutdown();
    events_->CloseAll(absl::OkStatus());
    // Every call's work stops at its next step and undoes what it made.
    shutdown_.Cancel(absl::UnavailableError("fcvmd is shutting down"));
    if (!calls_->WaitIdle(deadline)) {
      spdlog::warn("stopping with {} call(s) still running; answering them UNAVAILABLE", calls_->in_flight());
    }
    calls_->AbortAll(absl::UnavailableError(
        "fcvmd is shutting down; the operation was still running and may or may not have completed"));
    // Every call is answered by now; the short grace only lets the last
    // statuses reach their clients before connections close.
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
    if (unlink(options_.socket_path.c_str()) < 0 && errno != ENOENT) {
      spdlog::warn("cannot remove socket {}: {}", options_.socket_path, std::strerror(errno));
    }
  }
  // Operations already running finish (the Manager must outlive them); queued
  // ones were answered above and are dropped.
  if (pool_ != nullptr) pool_->Shutdown(WorkerPool::Mode::kCancel);
  shutdown_.Cancel(absl::UnavailableError("fcvmd is shutting down"));
  if (events_ != nullptr) events_->Detach();  // the services may still hold the hub
  manager_.reset();
  // After the VMs: ksmd's old settings back (merged pages stay merged).
  if (absl::Status st = ksm_.Restore(); !st.ok()) spdlog::warn("{}", st);
  if (server_ != nullptr) spdlog::info("fcvmd stopped");
}

}  // namespace fcvm::daemon
