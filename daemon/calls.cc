#include "daemon/calls.h"

#include <vector>

namespace fcvm::daemon {

void CallTracker::Done(uint64_t id) {
  absl::MutexLock lock(&mu_);
  calls_.erase(id);
}

void CallTracker::StartShutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

bool CallTracker::shutting_down() const {
  absl::MutexLock lock(&mu_);
  return shutting_down_;
}

bool CallTracker::StreamStarted() {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return false;
  ++streams_;
  return true;
}

void CallTracker::StreamDone() {
  absl::MutexLock lock(&mu_);
  --streams_;
}

bool CallTracker::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(
      absl::Condition(
          +[](CallTracker* t) { return t->calls_.empty() && t->streams_ == 0; }, this),
      deadline);
}

void CallTracker::AbortAll(const absl::Status& status) {
  std::vector<std::shared_ptr<UnaryCallBase>> calls;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, weak] : calls_) {
      if (std::shared_ptr<UnaryCallBase> call = weak.lock()) calls.push_back(std::move(call));
    }
  }
  // Outside the lock: Abort calls Done.
  for (auto& call : calls) call->Abort(status);
}

size_t CallTracker::in_flight() const {
  absl::MutexLock lock(&mu_);
  return calls_.size();
}

}  // namespace fcvm::daemon
