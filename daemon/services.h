#pragma once

// gRPC service implementations (callback API: handlers never block; work that
// blocks runs on fcvmd's own workers). Proto <-> domain conversion stays in
// daemon/.

#include <string>

#include "absl/time/time.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"

namespace fcvm::daemon {

// Facts SystemService reports; fixed for the daemon's life.
struct SystemInfo {
  std::string version;
  std::string firecracker_path;
  std::string firecracker_version;
  absl::Time started_at;
};

// API protocol version reported by GetVersion; bumped on incompatible changes.
inline constexpr uint32_t kApiVersion = 1;

class SystemServiceImpl final : public fcvm::v1::SystemService::CallbackService {
 public:
  explicit SystemServiceImpl(SystemInfo info) : info_(std::move(info)) {}
  grpc::ServerUnaryReactor* GetVersion(grpc::CallbackServerContext* context,
                                       const fcvm::v1::GetVersionRequest* request,
                                       fcvm::v1::GetVersionResponse* response) override;

 private:
  SystemInfo info_;
};

class VmServiceImpl final : public fcvm::v1::VmService::CallbackService {
 public:
  grpc::ServerUnaryReactor* ListVms(grpc::CallbackServerContext* context,
                                    const fcvm::v1::ListVmsRequest* request,
                                    fcvm::v1::ListVmsResponse* response) override;
};

class SnapshotServiceImpl final : public fcvm::v1::SnapshotService::CallbackService {
 public:
  grpc::ServerUnaryReactor* ListSnapshots(grpc::CallbackServerContext* context,
                                          const fcvm::v1::ListSnapshotsRequest* request,
                                          fcvm::v1::ListSnapshotsResponse* response) override;
};

}  // namespace fcvm::daemon
