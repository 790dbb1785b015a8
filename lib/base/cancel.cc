#include "lib/base/cancel.h"

#include <algorithm>

namespace fcvm {

CancelSource::CancelSource() : state_(std::make_shared<State>()) {}

CancelSource::CancelSource(const CancelToken& parent, absl::Time deadline)
    : state_(std::make_shared<State>()) {
  state_->parent = parent.state_;
  state_->deadline = deadline;
}

void CancelSource::Cancel(absl::Status why) {
  if (why.ok()) why = absl::CancelledError("cancelled");
  absl::MutexLock lock(&state_->mu);
  if (state_->cancelled.load()) return;
  state_->why = std::move(why);
  state_->cancelled.store(true);
}

CancelToken CancelSource::token() const { return CancelToken(state_); }

absl::Status CancelToken::Check() const {
  absl::Time now = absl::InfiniteFuture();
  for (CancelSource::State* s = state_.get(); s != nullptr; s = s->parent.get()) {
    if (s->cancelled.load()) {
      absl::MutexLock lock(&s->mu);
      return s->why;
    }
    if (s->deadline != absl::InfiniteFuture()) {
      if (now == absl::InfiniteFuture()) now = absl::Now();
      if (now >= s->deadline) return absl::DeadlineExceededError("deadline exceeded");
    }
  }
  return absl::OkStatus();
}

absl::Time CancelToken::deadline() const {
  absl::Time d = absl::InfiniteFuture();
  for (const CancelSource::State* s = state_.get(); s != nullptr; s = s->parent.get()) {
    d = std::min(d, s->deadline);
  }
  return d;
}

absl::Status CancelToken::SleepFor(absl::Duration d) const {
  absl::Time until = std::min(absl::Now() + d, deadline());
  if (state_ == nullptr) {
    absl::SleepFor(until - absl::Now());
    return absl::OkStatus();
  }
  while (true) {
    if (absl::Status st = Check(); !st.ok()) return st;
    absl::Time now = absl::Now();
    if (now >= until) return Check();
    // Own source: woken by Cancel through the mutex condition; parents are
    // polled every 50 ms.
    absl::Time step = std::min(until, now + absl::Milliseconds(50));
    absl::MutexLock lock(&state_->mu);
    state_->mu.AwaitWithDeadline(absl::Condition(
                                     +[](std::atomic<bool>* c) { return c->load(); }, &state_->cancelled),
                                 step);
  }
}

}  // namespace fcvm
