#pragma once

// Cancellation of long operations: a gRPC call whose client went away or whose
// deadline passed, or fcvmd shutting down, stops the work it started at the
// next checkpoint instead of finishing it for nobody.
//
// A CancelSource is held by whoever may cancel (the call, the daemon); the
// operation gets CancelTokens (cheap copies) and calls Check() between steps
// and inside loops (a disk copy checks every chunk). A token may have a
// parent: it is cancelled when the parent is, so one daemon-wide source can
// stop every call's token at once. A token also carries a deadline: past it,
// Check() returns DeadlineExceeded.
//
// A default-constructed token is never cancelled and has no deadline.
//
// Thread-safe: any thread may cancel or check. Cancel is sticky: the first
// status wins.

#include <atomic>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fcvm {

class CancelToken;

class CancelSource {
 public:
  // A root source.
  CancelSource();
  // A source whose tokens are also cancelled by `parent` and expire at
  // `deadline`.
  explicit CancelSource(const CancelToken& parent, absl::Time deadline = absl::InfiniteFuture());

  // Cancels with `why` (Cancelled, Unavailable, ...; an OK status becomes
  // Cancelled). Later calls are ignored.
  void Cancel(absl::Status why);
  CancelToken token() const;

 private:
  friend class CancelToken;
  struct State;
  std::shared_ptr<State> state_;
};

class CancelToken {
 public:
  CancelToken() = default;

  // OK while the work may go on; otherwise the cancellation's status (or
  // DeadlineExceeded "deadline exceeded" past the deadline), walking up to
  // the root.
  absl::Status Check() const;
  bool cancelled() const { return !Check().ok(); }
  // The earliest deadline on the way to the root.
  absl::Time deadline() const;

  // Sleeps up to `d`, returning early (with the status) when cancelled.
  // Wakes at once for a cancellation of this token's own source; one of a
  // parent's is seen within 50 ms.
  absl::Status SleepFor(absl::Duration d) const;

 private:
  friend class CancelSource;
  explicit CancelToken(std::shared_ptr<CancelSource::State> state) : state_(std::move(state)) {}
  std::shared_ptr<CancelSource::State> state_;
};

struct CancelSource::State {
  std::shared_ptr<State> parent;
  absl::Time deadline = absl::InfiniteFuture();
  std::atomic<bool> cancelled{false};
  absl::Mutex mu;
  absl::Status why ABSL_GUARDED_BY(mu);
};

}  // namespace fcvm
