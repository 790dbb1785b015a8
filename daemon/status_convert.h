#pragma once

// The one place where absl::Status becomes grpc::Status: codes map one to one
// (both follow google.rpc.Code), messages pass through.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace fcvm::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace fcvm::daemon
