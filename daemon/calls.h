#pragma once

// In-flight unary calls of fcvmd, so that Shutdown can answer every one of
// them: gRPC's Server::Shutdown waits for each callback call to finish, and a
// call whose worker is stuck in a long Manager operation would hold it up.
//
// A UnaryCall is answered exactly once, by whoever comes first: the worker
// with the Manager's result, or the tracker's AbortAll. The worker fills a
// response of its own, copied into gRPC's only by the winner, so a late
// worker never touches a call gRPC has already released.

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/status_convert.h"
#include "grpcpp/support/server_callback.h"

namespace fcvm::daemon {

class CallTracker;

class UnaryCallBase {
 public:
  virtual ~UnaryCallBase() = default;
  // Answers the call with `status` unless it is already answered.
  virtual void Abort(const absl::Status& status) = 0;
};

template <typename Response>
class UnaryCall final : public UnaryCallBase {
 public:
  UnaryCall(CallTracker* tracker, uint64_t id, grpc::ServerUnaryReactor* reactor, Response* response)
      : tracker_(tracker), id_(id), reactor_(reactor), response_(response) {}
  // Every path answers its call; this only catches a bug that would otherwise
  // leave the client (and gRPC's Shutdown) waiting forever.
  ~UnaryCall() override {
    Complete(absl::InternalError("fcvmd dropped this call without an answer (a bug)"), nullptr);
  }

  // Answers with `status` and, when OK, `result` (swapped in). Returns false
  // when the call was already answered (nothing is touched then).
  bool Complete(const absl::Status& status, Response* result);
  void Abort(const absl::Status& status) override { Complete(status, nullptr); }

 private:
  CallTracker* const tracker_;
  const uint64_t id_;
  absl::Mutex mu_;
  bool answered_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ServerUnaryReactor* const reactor_;
  Response* const response_;
};

// Thread-safe.
class CallTracker {
 public:
  // A new tracked call, or nullptr once StartShutdown was called (answer the
  // call Unavailable yourself then).
  template <typename Response>
  std::shared_ptr<UnaryCall<Response>> Begin(grpc::ServerUnaryReactor* reactor, Response* response) {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return nullptr;
    uint64_t id = next_id_++;
    auto call = std::make_shared<UnaryCall<Response>>(this, id, reactor, response);
    calls_[id] = call;
    return call;
  }

  // Called by a call once answered.
  void Done(uint64_t id);

  // Server streams (WatchEvents), counted so that Shutdown can let their
  // final status reach the client before the server closes connections.
  // StreamStarted is false once StartShutdown was called (then do not call
  // StreamDone).
  bool StreamStarted();
  void StreamDone();

  void StartShutdown();
  bool shutting_down() const;
  // Waits until no call or stream is in flight or `deadline` passes; true
  // when idle.
  bool WaitIdle(absl::Time deadline);
  // Answers every call in flight with `status`.
  void AbortAll(const absl::Status& status);
  size_t in_flight() const;

 private:
  mutable absl::Mutex mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  size_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, std::weak_ptr<UnaryCallBase>> calls_ ABSL_GUARDED_BY(mu_);
};

template <typename Response>
bool UnaryCall<Response>::Complete(const absl::Status& status, Response* result) {
  {
    absl::MutexLock lock(&mu_);
    if (answered_) return false;
    answered_ = true;
    if (status.ok() && result != nullptr) response_->Swap(result);
  }
  tracker_->Done(id_);
  reactor_->Finish(ToGrpcStatus(status));
  return true;
}

}  // namespace fcvm::daemon
