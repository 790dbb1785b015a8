#include "daemon/grpc_metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/support/interceptor.h"
#include "lib/base/status.h"

namespace fcvm::daemon {
namespace {

using grpc::experimental::InterceptionHookPoints;

// 0.5 ms .. 10 min: reads answer in well under a millisecond, a clone of
// 1,024 VMs takes minutes.
const std::vector<double> kHandlingBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,    1,     2.5,    5,     10,   30,    60,   120, 600};

struct Families {
  metrics::CounterFamily* handled = nullptr;
  metrics::HistogramFamily* handling = nullptr;
};

// "/fcvm.v1.VmService/GetVm" -> {"fcvm.v1.VmService", "GetVm"}.
std::pair<std::string, std::string> SplitMethod(const char* full) {
  std::string m = full == nullptr ? "" : full;
  if (!m.empty() && m[0] == '/') m.erase(0, 1);
  size_t slash = m.rfind('/');
  if (slash == std::string::npos) return {"unknown", m.empty() ? "unknown" : m};
  return {m.substr(0, slash), m.substr(slash + 1)};
}

class CallMetrics final : public grpc::experimental::Interceptor {
 public:
  CallMetrics(const Families& f, grpc::experimental::ServerRpcInfo* info)
      : f_(f), unary_(info->type() == grpc::experimental::ServerRpcInfo::Type::UNARY), start_(absl::Now()) {
    std::tie(service_, method_) = SplitMethod(info->method());
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status st = methods->GetSendStatus();
      f_.handled->WithLabels({service_, method_, GrpcCodeName(static_cast<int>(st.error_code()))})
          .Increment();
      if (unary_) {
        f_.handling->WithLabels({service_, method_}).Observe(absl::ToDoubleSeconds(absl::Now() - start_));
      }
    }
    methods->Proceed();
  }

 private:
  const Families f_;
  const bool unary_;
  const absl::Time start_;
  std::string service_;
  std::string method_;
};

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(Families f) : f_(f) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new CallMetrics(f_, info);
  }

 private:
  const Families f_;
};

}  // namespace

std::string GrpcCodeName(int code) {
  static constexpr const char* kNames[] = {
      "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED",
  };
  if (code >= 0 && code < static_cast<int>(std::size(kNames))) return kNames[code];
  return absl::StrCat("CODE_", code);
}

absl::StatusOr<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> MakeGrpcMetrics(
    metrics::Registry& registry, const std::vector<std::string>& services) {
  Families f;
  ASSIGN_OR_RETURN(f.handled, registry.AddCounterFamily(
                                  {.name = "fcvm_grpc_server_handled_total",
                                   .help = "gRPC calls fcvmd answered, by service, method and status code.",
                                   .labels = {"grpc_service", "grpc_method", "grpc_code"},
                                   .max_series = 512}));
  ASSIGN_OR_RETURN(f.handling, registry.AddHistogramFamily(
                                   {.name = "fcvm_grpc_server_handling_seconds",
                                    .help = "Time from a unary gRPC call's arrival to its status, by service "
                                            "and method.",
                                    .labels = {"grpc_service", "grpc_method"},
                                    .max_series = 128},
                                   kHandlingBounds));
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = service->method(i);
      f.handled->WithLabels({name, m->name(), "OK"});
      if (!m->client_streaming() && !m->server_streaming()) f.handling->WithLabels({name, m->name()});
    }
  }
  return std::make_unique<Factory>(f);
}

}  // namespace fcvm::daemon
