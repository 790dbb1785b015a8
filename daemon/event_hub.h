#pragma once

// Connects WatchEvents streams to the Manager's event log. Each stream's
// Sink subscribes on its own (so it can start from the backlog, see
// lib/vm/events.h); the hub keeps the list so that fcvmd's shutdown can end
// every stream, and counts the page-server drops for GetPageServerStats.
//
// Ownership: the hub and the sinks are shared_ptrs, because the Manager may
// still be delivering an event (on its own thread) after Unsubscribe returned;
// a sink whose stream ended just ignores it.
//
// Thread-safe. Deliveries run on the Manager thread that caused the event,
// with the event log's lock held: a sink only queues, never waits for a
// client.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "lib/vm/types.h"

namespace fcvm::daemon {

class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Deliver(const vm::Event& event) = 0;
  // The hub is closing (fcvmd stops): end the stream with `status`.
  virtual void Close(const absl::Status& status) = 0;
};

class EventHub {
 public:
  // How the hub reaches the event log (the Manager's Subscribe/Unsubscribe).
  using SubscribeFn =
      std::function<uint64_t(std::function<void(const vm::Event&)>, std::optional<uint64_t> replay_after)>;
  using UnsubscribeFn = std::function<void(uint64_t)>;

  EventHub(SubscribeFn subscribe, UnsubscribeFn unsubscribe);
  // Detach().
  ~EventHub();

  // Subscribes `sink` (first replaying the kept events numbered above
  // `replay_after`, when given). False when the hub is closed.
  bool Add(const std::shared_ptr<EventSink>& sink, std::optional<uint64_t> replay_after);
  void Remove(const EventSink* sink);
  // Closes every sink with `status`; later Adds fail.
  void CloseAll(const absl::Status& status);
  // Unsubscribes everything from the event log, for good: call it before the
  // log's owner (the Manager) goes away, whoever still holds the hub.
  void Detach();

  // Page-server sessions dropped (bad handshake, failed copy) since start.
  uint64_t dropped_sessions() const;
  size_t sinks() const;

 private:
  const SubscribeFn subscribe_;
  const UnsubscribeFn unsubscribe_;
  uint64_t drops_token_ = 0;
  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t dropped_sessions_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<const EventSink*, std::pair<std::shared_ptr<EventSink>, uint64_t>> sinks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::daemon
