#include "daemon/request_cache.h"

#include <iterator>

#include "absl/strings/str_cat.h"

namespace fcvm::daemon {

RequestCache::Begin RequestCache::Start(const std::string& method, const std::string& id,
                                        const std::string& fingerprint, Waiter waiter, Result* result) {
  absl::MutexLock lock(&mu_);
  absl::Time now = options_.now();
  EvictLocked(now);
  Key key(method, id);
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    Entry& e = it->second;
    if (e.fingerprint != fingerprint) {
      *result = {absl::InvalidArgumentError(absl::StrCat(
                     "client_request_id '", id, "' was already used for a different ", method, " request")),
                 ""};
      return Begin::kConflict;
    }
    if (e.done) {
      *result = e.result;
      return Begin::kDone;
    }
    e.waiters.push_back(std::move(waiter));
    return Begin::kWaiting;
  }
  order_.push_back(key);
  Entry& e = entries_[key];
  e.fingerprint = fingerprint;
  e.started = now;
  e.order = std::prev(order_.end());
  bytes_ += fingerprint.size();
  EvictLocked(now);
  return Begin::kRun;
}

void RequestCache::Finish(const std::string& method, const std::string& id, Result result) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(Key(method, id));
    if (it == entries_.end() || it->second.done) return;
    Entry& e = it->second;
    e.done = true;
    e.result = result;
    bytes_ += e.result.response.size() + e.result.status.message().size();
    waiters.swap(e.waiters);
    EvictLocked(options_.now());
  }
  for (const Waiter& w : waiters) w(result);
}

void RequestCache::Abandon(const std::string& method, const std::string& id, const Result& result) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(Key(method, id));
    if (it == entries_.end() || it->second.done) return;
    waiters.swap(it->second.waiters);
    EraseLocked(it);
  }
  for (const Waiter& w : waiters) w(result);
}

size_t RequestCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

void RequestCache::EraseLocked(std::map<Key, Entry>::iterator it) {
  const Entry& e = it->second;
  bytes_ -= e.fingerprint.size();
  if (e.done) bytes_ -= e.result.response.size() + e.result.status.message().size();
  order_.erase(e.order);
  entries_.erase(it);
}

void RequestCache::EvictLocked(absl::Time now) {
  // Oldest first. Running entries are skipped: they neither expire (their
  // waiters still need the answer) nor count as evictable.
  for (auto o = order_.begin(); o != order_.end();) {
    bool expired = now - entries_.at(*o).started >= options_.ttl;
    bool over = entries_.size() > options_.max_entries || bytes_ > options_.max_bytes;
    if (!expired && !over) break;
    auto it = entries_.find(*o);
    ++o;
    if (it->second.done) EraseLocked(it);
  }
}

}  // namespace fcvm::daemon
