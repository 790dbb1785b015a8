#include "lib/vm/events.h"

#include <algorithm>
#include <utility>

namespace fcvm::vm {

uint64_t EventLog::Publish(Event event) {
  absl::MutexLock lock(&mu_);
  event.sequence = next_sequence_++;
  event.time = absl::Now();
  if (capacity_ > 0) {
    backlog_.push_back(event);
    while (backlog_.size() > capacity_) backlog_.pop_front();
  }
  bool gone = false;
  for (const std::shared_ptr<Subscriber>& s : subscribers_) {
    if (s->active.load()) {
      s->callback(event);
    } else {
      gone = true;
    }
  }
  if (gone) {
    subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                      [](const std::shared_ptr<Subscriber>& s) { return !s->active.load(); }),
                       subscribers_.end());
  }
  return event.sequence;
}

uint64_t EventLog::Subscribe(Callback callback, std::optional<uint64_t> replay_after) {
  auto s = std::make_shared<Subscriber>();
  s->callback = std::move(callback);
  absl::MutexLock lock(&mu_);
  if (replay_after.has_value()) {
    for (const Event& e : backlog_) {
      if (e.sequence > *replay_after) s->callback(e);
    }
  }
  subscribers_.push_back(s);
  absl::MutexLock tokens(&tokens_mu_);
  uint64_t token = next_token_++;
  tokens_.emplace(token, std::move(s));
  return token;
}

void EventLog::Unsubscribe(uint64_t token) {
  absl::MutexLock lock(&tokens_mu_);
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  it->second->active.store(false);
  tokens_.erase(it);
}

uint64_t EventLog::last_sequence() const {
  absl::MutexLock lock(&mu_);
  return next_sequence_ - 1;
}

uint64_t EventLog::first_sequence() const {
  absl::MutexLock lock(&mu_);
  return backlog_.empty() ? next_sequence_ : backlog_.front().sequence;
}

}  // namespace fcvm::vm
