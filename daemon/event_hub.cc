#include "daemon/event_hub.h"

#include <algorithm>

namespace fcvm::daemon {

bool EventHub::Add(std::shared_ptr<EventSink> sink) {
  absl::MutexLock lock(&mu_);
  if (closed_) return false;
  sinks_.push_back(std::move(sink));
  return true;
}

void EventHub::Remove(const EventSink* sink) {
  absl::MutexLock lock(&mu_);
  sinks_.erase(
      std::remove_if(sinks_.begin(), sinks_.end(), [sink](const auto& s) { return s.get() == sink; }),
      sinks_.end());
}

void EventHub::Publish(const vm::Event& event) {
  std::vector<std::shared_ptr<EventSink>> sinks;
  {
    absl::MutexLock lock(&mu_);
    if (event.kind == vm::EventKind::kPageServerDrop) ++dropped_sessions_;
    sinks = sinks_;
  }
  for (const auto& sink : sinks) sink->Deliver(event);
}

void EventHub::CloseAll(const absl::Status& status) {
  std::vector<std::shared_ptr<EventSink>> sinks;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    sinks.swap(sinks_);
  }
  for (const auto& sink : sinks) sink->Close(status);
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
