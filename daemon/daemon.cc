#include "daemon/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "daemon/services.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"
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

// "Firecracker v1.14.2\n..." -> "1.14.2".
std::string ProbeFirecrackerVersion(const std::string& bin) {
  if (bin.empty()) return "";
  absl::StatusOr<std::string> out = RunAndCapture({bin, "--version"}, absl::Seconds(5));
  if (!out.ok()) {
    spdlog::warn("cannot run firecracker binary {}: {}", bin, out.status().ToString());
    return "";
  }
  size_t v = out->find(" v");
  if (v == std::string::npos) return "";
  size_t end = out->find_first_of(" \r\n", v + 2);
  return out->substr(v + 2, end == std::string::npos ? std::string::npos : end - v - 2);
}

}  // namespace

struct Daemon::Services {
  explicit Services(SystemInfo info) : system(std::move(info)) {}
  SystemServiceImpl system;
  VmServiceImpl vm;
  SnapshotServiceImpl snapshot;
};

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  if (options.socket_path.empty() || options.socket_path.size() > 107) {
    return absl::InvalidArgumentError(
        absl::StrCat("--socket must be 1-107 bytes (a Unix socket path), got '", options.socket_path, "'"));
  }
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state-dir must not be empty");
  RETURN_IF_ERROR(Annotate(MakeDirs(DirName(options.socket_path), 0755), "socket directory"));
  RETURN_IF_ERROR(Annotate(MakeDirs(options.state_dir, 0700), "state directory"));
  RETURN_IF_ERROR(ClaimSocketPath(options.socket_path));

  std::unique_ptr<Daemon> daemon(new Daemon(options));
  daemon->started_at_ = absl::Now();
  daemon->firecracker_version_ = ProbeFirecrackerVersion(options.firecracker_bin);
  daemon->services_ = std::make_unique<Services>(
      SystemInfo{FCVM_VERSION, options.firecracker_bin, daemon->firecracker_version_, daemon->started_at_});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", options.socket_path), grpc::InsecureServerCredentials());
  builder.RegisterService(&daemon->services_->system);
  builder.RegisterService(&daemon->services_->vm);
  builder.RegisterService(&daemon->services_->snapshot);
  // gRPC creates the socket file itself; a umask matching socket_mode makes it
  // born with the right mode, so no client ever sees a wider one. Start-up is
  // the only time fcvmd creates files while it changes the umask.
  mode_t old_umask = umask(static_cast<mode_t>(~options.socket_mode & 0777));
  daemon->server_ = builder.BuildAndStart();
  umask(old_umask);
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
  spdlog::info("fcvmd {} serving on unix:{} (state {}, firecracker {} {})", FCVM_VERSION, options.socket_path,
               options.state_dir,
               options.firecracker_bin.empty() ? "<not configured>" : options.firecracker_bin,
               daemon->firecracker_version_);
  return daemon;
}

void Daemon::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  server_->Wait();
  if (unlink(options_.socket_path.c_str()) < 0 && errno != ENOENT) {
    spdlog::warn("cannot remove socket {}: {}", options_.socket_path, std::strerror(errno));
  }
  spdlog::info("fcvmd stopped");
}

}  // namespace fcvm::daemon
