#pragma once

// The manager's lifecycle events: numbered, kept in a bounded backlog, and
// passed to subscribers. A subscriber may start from the backlog, so that
// what happened before it connected (start-up reconcile, in particular)
// still reaches it, in order and without gaps or duplicates.
//
// Thread-safe. Callbacks run on the publishing thread while the log's lock is
// held (that is what keeps replay and live delivery in order): they must be
// quick and must not call the manager, nor Publish or Subscribe. They may
// Unsubscribe (theirs or another's). A delivery that began before an
// Unsubscribe may still be running when it returns: a callback owns (shares)
// what it uses.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

// Events kept for late subscribers by default.
inline constexpr size_t kDefaultEventBacklog = 4096;

class EventLog {
 public:
  using Callback = std::function<void(const Event&)>;

  explicit EventLog(size_t backlog = kDefaultEventBacklog) : capacity_(backlog) {}

  // Numbers `event` (sequence and time), keeps it and delivers it. Returns its
  // sequence number.
  uint64_t Publish(Event event);

  // Registers `callback`. With `replay_after`, the backlog's events numbered
  // above it are delivered first (0 = the whole backlog); without, only later
  // events. Returns a token for Unsubscribe.
  uint64_t Subscribe(Callback callback, std::optional<uint64_t> replay_after = std::nullopt);
  void Unsubscribe(uint64_t token);

  // The sequence number of the last event published (0 before the first) and
  // of the oldest still in the backlog.
  uint64_t last_sequence() const;
  uint64_t first_sequence() const;

 private:
  struct Subscriber {
    Callback callback;
    std::atomic<bool> active{true};
  };

  const size_t capacity_;
  // Order: mu_ before tokens_mu_. Unsubscribe takes only tokens_mu_, so it
  // may run inside a delivery; the subscriber is dropped from subscribers_ by
  // the next Publish.
  mutable absl::Mutex mu_;
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Event> backlog_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Subscriber>> subscribers_ ABSL_GUARDED_BY(mu_);
  absl::Mutex tokens_mu_ ABSL_ACQUIRED_AFTER(mu_);
  uint64_t next_token_ ABSL_GUARDED_BY(tokens_mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Subscriber>> tokens_ ABSL_GUARDED_BY(tokens_mu_);
};

}  // namespace fcvm::vm
