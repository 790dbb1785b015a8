#pragma once

// gRPC service implementations over fcvm::vm::Manager (callback API).
//
// Threads: reads (Get*, List*, GetVersion, GetPageServerStats) only take the
// Manager's locks (its header promises they do not block) and answer on the
// gRPC thread. Every mutating rpc is posted to fcvmd's WorkerPool; the worker
// runs the Manager operation and answers the call (see calls.h for how
// Shutdown answers calls whose worker is still busy). WatchEvents streams are
// fed by the EventHub and write one event at a time.
//
// Idempotency: a mutating request with a client_request_id goes through the
// RequestCache first, so a retry gets the first answer (see request_cache.h).
//
// Cancellation: each mutating call's work gets a CancelToken that ends when
// the client cancels, its deadline passes, or fcvmd starts stopping; the
// Manager then stops the operation and undoes what it made.
//
// Every answer fcvmd gives itself carries the trailing metadata
// fcvm::v1::kServedByKey (fcvm/v1/wire.h).

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "daemon/calls.h"
#include "daemon/event_hub.h"
#include "daemon/request_cache.h"
#include "daemon/worker_pool.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "lib/base/cancel.h"
#include "lib/vm/manager.h"

namespace fcvm::daemon {

// Facts SystemService reports; fixed for the daemon's life.
struct SystemInfo {
  std::string version;
  std::string firecracker_path;
  std::string firecracker_version;
  absl::Time started_at;
  // "jailer 1.7.0" or "none".
  std::string isolation;
};

// API protocol version reported by GetVersion; bumped on incompatible changes.
inline constexpr uint32_t kApiVersion = 1;

// What the services share; owned by the Daemon, which outlives the services'
// calls (it shuts the server down before destroying any of these).
struct ServiceDeps {
  vm::Manager* manager = nullptr;
  // Cancelled when fcvmd starts stopping: every call's work is cancelled with it.
  CancelToken shutdown;
  WorkerPool* pool = nullptr;
  RequestCache* cache = nullptr;
  CallTracker* calls = nullptr;
  std::shared_ptr<EventHub> events;
};

// Most events a WatchEvents stream may have queued for a slow client; beyond
// it the stream ends with RESOURCE_EXHAUSTED (the client reconnects and
// re-reads state) rather than fcvmd growing without bound.
inline constexpr size_t kMaxQueuedEvents = 4096;

class SystemServiceImpl final : public fcvm::v1::SystemService::CallbackService {
 public:
  SystemServiceImpl(SystemInfo info, ServiceDeps deps) : info_(std::move(info)), deps_(std::move(deps)) {}
  grpc::ServerUnaryReactor* GetVersion(grpc::CallbackServerContext* context,
                                       const fcvm::v1::GetVersionRequest* request,
                                       fcvm::v1::GetVersionResponse* response) override;
  grpc::ServerUnaryReactor* GetPageServerStats(grpc::CallbackServerContext* context,
                                               const fcvm::v1::GetPageServerStatsRequest* request,
                                               fcvm::v1::PageServerStats* response) override;
  grpc::ServerWriteReactor<fcvm::v1::Event>* WatchEvents(
      grpc::CallbackServerContext* context, const fcvm::v1::WatchEventsRequest* request) override;

 private:
  SystemInfo info_;
  ServiceDeps deps_;
};

class VmServiceImpl final : public fcvm::v1::VmService::CallbackService {
 public:
  explicit VmServiceImpl(ServiceDeps deps) : deps_(std::move(deps)) {}
  grpc::ServerUnaryReactor* RunVm(grpc::CallbackServerContext* context, const fcvm::v1::RunVmRequest* request,
                                  fcvm::v1::Vm* response) override;
  grpc::ServerUnaryReactor* GetVm(grpc::CallbackServerContext* context, const fcvm::v1::GetVmRequest* request,
                                  fcvm::v1::Vm* response) override;
  grpc::ServerUnaryReactor* ListVms(grpc::CallbackServerContext* context,
                                    const fcvm::v1::ListVmsRequest* request,
                                    fcvm::v1::ListVmsResponse* response) override;
  grpc::ServerUnaryReactor* PauseVm(grpc::CallbackServerContext* context,
                                    const fcvm::v1::PauseVmRequest* request, fcvm::v1::Vm* response) override;
  grpc::ServerUnaryReactor* ResumeVm(grpc::CallbackServerContext* context,
                                     const fcvm::v1::ResumeVmRequest* request,
                                     fcvm::v1::Vm* response) override;
  grpc::ServerUnaryReactor* DeleteVm(grpc::CallbackServerContext* context,
                                     const fcvm::v1::DeleteVmRequest* request,
                                     fcvm::v1::DeleteVmResponse* response) override;
  grpc::ServerUnaryReactor* GetVmMetadata(grpc::CallbackServerContext* context,
                                          const fcvm::v1::GetVmMetadataRequest* request,
                                          fcvm::v1::VmMetadata* response) override;
  grpc::ServerUnaryReactor* SetVmMetadata(grpc::CallbackServerContext* context,
                                          const fcvm::v1::SetVmMetadataRequest* request,
                                          fcvm::v1::VmMetadata* response) override;

 private:
  ServiceDeps deps_;
};

class SnapshotServiceImpl final : public fcvm::v1::SnapshotService::CallbackService {
 public:
  explicit SnapshotServiceImpl(ServiceDeps deps) : deps_(std::move(deps)) {}
  grpc::ServerUnaryReactor* CreateSnapshot(grpc::CallbackServerContext* context,
                                           const fcvm::v1::CreateSnapshotRequest* request,
                                           fcvm::v1::Snapshot* response) override;
  grpc::ServerUnaryReactor* GetSnapshot(grpc::CallbackServerContext* context,
                                        const fcvm::v1::GetSnapshotRequest* request,
                                        fcvm::v1::Snapshot* response) override;
  grpc::ServerUnaryReactor* ListSnapshots(grpc::CallbackServerContext* context,
                                          const fcvm::v1::ListSnapshotsRequest* request,
                                          fcvm::v1::ListSnapshotsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSnapshot(grpc::CallbackServerContext* context,
                                           const fcvm::v1::DeleteSnapshotRequest* request,
                                           fcvm::v1::DeleteSnapshotResponse* response) override;
  grpc::ServerUnaryReactor* CloneSnapshot(grpc::CallbackServerContext* context,
                                          const fcvm::v1::CloneSnapshotRequest* request,
                                          fcvm::v1::CloneSnapshotResponse* response) override;
  grpc::ServerUnaryReactor* ForkVm(grpc::CallbackServerContext* context,
                                   const fcvm::v1::ForkVmRequest* request,
                                   fcvm::v1::ForkVmResponse* response) override;

 private:
  ServiceDeps deps_;
};

}  // namespace fcvm::daemon
