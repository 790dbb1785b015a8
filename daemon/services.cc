#include "daemon/services.h"

#include "google/protobuf/util/time_util.h"

namespace fcvm::daemon {

grpc::ServerUnaryReactor* SystemServiceImpl::GetVersion(grpc::CallbackServerContext* context,
                                                        const fcvm::v1::GetVersionRequest* /*request*/,
                                                        fcvm::v1::GetVersionResponse* response) {
  response->set_version(info_.version);
  response->set_firecracker_path(info_.firecracker_path);
  response->set_firecracker_version(info_.firecracker_version);
  response->set_api_version(kApiVersion);
  *response->mutable_started_at() =
      google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(info_.started_at));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

// The VM and snapshot registries arrive with the VM manager (lib/vm); until
// then fcvmd owns no VMs or snapshots, and these lists are truthfully empty.
grpc::ServerUnaryReactor* VmServiceImpl::ListVms(grpc::CallbackServerContext* context,
                                                 const fcvm::v1::ListVmsRequest* /*request*/,
                                                 fcvm::v1::ListVmsResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::ListSnapshots(
    grpc::CallbackServerContext* context, const fcvm::v1::ListSnapshotsRequest* /*request*/,
    fcvm::v1::ListSnapshotsResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace fcvm::daemon
