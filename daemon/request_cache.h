#pragma once

// client_request_id idempotency: remembers the answer to each mutating request
// that carried a client_request_id, so that a retry returns the first answer
// instead of doing the work twice (fcvm.v1 promises 24 hours).
//
// Keys are (method, client_request_id): the same id on two different methods
// is two requests. Each entry also keeps a fingerprint of the request (its
// deterministic serialization); reusing an id for a different request is an
// InvalidArgument, as a silent replay of an unrelated answer would be worse.
//
// Nothing here blocks: a retry that arrives while the first request is still
// running registers a callback that receives the first answer when it is
// stored (Finish), so neither gRPC threads nor workers wait on each other.
//
// Bounds: entries expire `ttl` after the request began; beyond `max_entries`
// or `max_bytes` the oldest finished entries are evicted first (running ones
// never are: their waiters need them).
//
// Persistence (Options::path, fcvmd's <state>/request-ids): every Finish
// rewrites the file with the finished answers (newest first up to
// `max_persisted_bytes`), atomically (written to a temporary file, then
// renamed), and Load reads it back at start, so a retry after a restart or a
// crash still gets the first answer. A request that was still running when
// fcvmd died has no answer there: its retry runs it again (start-up
// reconcile has undone what the first one made unless it had finished).
//
// Thread-safe. Callbacks run without the cache's lock held, on the thread
// that calls Finish/Abandon.

#include <cstddef>
#include <functional>
#include <list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fcvm::daemon {

class RequestCache {
 public:
  struct Options {
    absl::Duration ttl = absl::Hours(24);
    size_t max_entries = 10000;
    // Sum of stored fingerprints and responses.
    size_t max_bytes = 64 << 20;
    // Where finished answers are kept across restarts; empty: memory only.
    std::string path;
    // Bound of that file (the newest answers that fit are kept).
    size_t max_persisted_bytes = 16 << 20;
    // Injected for tests.
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // The first answer: a status and, when OK, the serialized response.
  struct Result {
    absl::Status status;
    std::string response;
  };
  using Waiter = std::function<void(const Result&)>;

  enum class Begin {
    kRun,       // new request: the caller runs it, then calls Finish (or Abandon)
    kDone,      // answered before: *result holds the first answer
    kWaiting,   // the first is still running: `waiter` gets its answer later
    kConflict,  // the id was used for a different request: *result holds InvalidArgument
  };

  RequestCache() : RequestCache(Options()) {}
  explicit RequestCache(Options options) : options_(std::move(options)) {}

  // Looks up (method, id). `waiter` is only kept for kWaiting.
  Begin Start(const std::string& method, const std::string& id, const std::string& fingerprint, Waiter waiter,
              Result* result);

  // Stores the answer of a kRun request and hands it to the requests waiting
  // for it. No-op for an unknown key.
  void Finish(const std::string& method, const std::string& id, Result result);

  // Forgets a kRun request without storing an answer (it never ran, e.g. the
  // daemon is stopping); waiters get `result` so that they are answered.
  void Abandon(const std::string& method, const std::string& id, const Result& result);

  size_t size() const;

  // Reads back the answers a previous fcvmd kept at Options::path (those not
  // expired). OK when there is no file yet; DataLoss naming the file when it
  // is not one this cache wrote (nothing is loaded then).
  absl::Status Load();

 private:
  using Key = std::pair<std::string, std::string>;  // method, id
  struct Entry {
    std::string fingerprint;
    absl::Time started;
    bool done = false;
    Result result;
    std::vector<Waiter> waiters;
    std::list<Key>::iterator order;
  };

  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rewrites Options::path from the finished entries; logs a failure (the
  // answers stay cached in memory).
  void Persist();
  void EraseLocked(std::map<Key, Entry>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<Key> order_ ABSL_GUARDED_BY(mu_);  // by start time, oldest first
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Serializes Persist (taken before mu_), so files are written in order.
  absl::Mutex persist_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool persist_failed_ ABSL_GUARDED_BY(persist_mu_) = false;
};

}  // namespace fcvm::daemon
