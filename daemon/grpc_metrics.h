#pragma once

// gRPC calls by method and status code, for fcvmd's /metrics: a server
// interceptor that counts every call's status when it is sent
// (fcvm_grpc_server_handled_total{grpc_service, grpc_method, grpc_code}) and
// times unary calls from arrival to status
// (fcvm_grpc_server_handling_seconds{grpc_service, grpc_method}). Streams
// (WatchEvents) are counted when they end, not timed.
//
// Cardinality: the methods are those the server registers (about 20) and the
// codes gRPC's 17; the families cap themselves at 512 series anyway.
//
// Thread-safety: interceptors run on gRPC's threads; the families are
// lock-free to update once a series exists.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/support/server_interceptor.h"
#include "lib/metrics/registry.h"

namespace fcvm::daemon {

// Registers the two families in `registry` (which must outlive the server
// the factory is given to) and creates, at zero, the OK series of every
// method of `services` (full names: "fcvm.v1.VmService"), so that rates start
// from 0. Errors: the registry's.
absl::StatusOr<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> MakeGrpcMetrics(
    metrics::Registry& registry, const std::vector<std::string>& services);

// The name gRPC gives a status code ("NOT_FOUND"), "CODE_<n>" for others.
std::string GrpcCodeName(int code);

}  // namespace fcvm::daemon
