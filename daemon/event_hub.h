#pragma once

// Fans the Manager's lifecycle events out to the open WatchEvents streams.
// fcvmd subscribes one hub to the Manager; each stream registers a Sink.
//
// Ownership: the hub and the sinks are shared_ptrs, because the Manager may
// still be delivering an event (on its own thread, outside its lock) after
// Unsubscribe returned; a sink whose stream ended just ignores it.
//
// Thread-safe. Publish runs on the Manager thread that caused the event and
// only queues (never waits for a client).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  // False when the hub is closed (the sink is not added).
  bool Add(std::shared_ptr<EventSink> sink);
  void Remove(const EventSink* sink);
  void Publish(const vm::Event& event);
  // Closes every sink with `status`; later Adds fail.
  void CloseAll(const absl::Status& status);

  // Page-server sessions dropped (bad handshake, failed copy) since start.
  uint64_t dropped_sessions() const;
  size_t sinks() const;

 private:
  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t dropped_sessions_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::shared_ptr<EventSink>> sinks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::daemon
