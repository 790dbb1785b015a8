#include "daemon/event_hub.h"

#include <utility>
#include <vector>

namespace fcvm::daemon {

EventHub::EventHub(SubscribeFn subscribe, UnsubscribeFn unsubscribe)
    : subscribe_(std::move(subscribe)), unsubscribe_(std::move(unsubscribe)) {
  drops_token_ = subscribe_(
      [this](const vm::Event& event) {
        if (event.kind != vm::EventKind::kPageServerDrop) return;
        absl::MutexLock lock(&mu_);
        ++dropped_sessions_;
      },
      std::nullopt);
}

EventHub::~EventHub() { Detach(); }

void EventHub::Detach() {
  std::vector<uint64_t> tokens;
  {
    absl::MutexLock lock(&mu_);
    if (detached_) return;
    detached_ = true;
    closed_ = true;
    tokens.push_back(drops_token_);
    for (auto& [ptr, entry] : sinks_) tokens.push_back(entry.second);
    sinks_.clear();
  }
  for (uint64_t t : tokens) unsubscribe_(t);
}

bool EventHub::Add(const std::shared_ptr<EventSink>& sink, std::optional<uint64_t> replay_after) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
  }
  // Outside the hub's lock: the replay delivers under the event log's.
  uint64_t token = subscribe_([sink](const vm::Event& event) { sink->Deliver(event); }, replay_after);
  absl::MutexLock lock(&mu_);
  if (closed_) {
    unsubscribe_(token);
    return false;
  }
  sinks_[sink.get()] = {sink, token};
  return true;
}

void EventHub::Remove(const EventSink* sink) {
  uint64_t token = 0;
  {
    absl::MutexLock lock(&mu_);
    if (detached_) return;
    auto it = sinks_.find(sink);
    if (it == sinks_.end()) return;
    token = it->second.second;
    sinks_.erase(it);
  }
  unsubscribe_(token);
}

void EventHub::CloseAll(const absl::Status& status) {
  std::map<const EventSink*, std::pair<std::shared_ptr<EventSink>, uint64_t>> sinks;
  bool detached;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    detached = detached_;
    sinks.swap(sinks_);
  }
  for (auto& [ptr, entry] : sinks) {
    if (!detached) unsubscribe_(entry.second);
    entry.first->Close(status);
  }
}

uint64_t EventHub::dropped_sessions() const {
  absl::MutexLock lock(&mu_);
  return dropped_sessions_;
}

size_t EventHub::sinks() const {
  absl::MutexLock lock(&mu_);
  return sinks_.size();
}

}  // namespace fcvm::daemon
