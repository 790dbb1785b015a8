#include "daemon/request_cache.h"

#include <cstdint>
#include <cstring>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "spdlog/spdlog.h"

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
  Persist();
  for (const Waiter& w : waiters) w(result);
}

// ---- the file: "FCVMRQ1\n", then per answer, oldest first: method, id,
// fingerprint, started (unix ns), status code, status message, response;
// strings as a 4-byte length and the bytes, numbers as 8 bytes, little-endian
// (the hosts fcvmd runs on).

namespace {

constexpr char kMagic[] = "FCVMRQ1\n";

void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), sizeof(v)); }
void PutStr(std::string* out, const std::string& s) {
  uint32_t n = static_cast<uint32_t>(s.size());
  out->append(reinterpret_cast<const char*>(&n), sizeof(n));
  out->append(s);
}

struct Reader {
  absl::string_view in;
  bool ok = true;
  uint64_t U64() {
    uint64_t v = 0;
    if (in.size() < sizeof(v)) return ok = false, 0;
    std::memcpy(&v, in.data(), sizeof(v));
    in.remove_prefix(sizeof(v));
    return v;
  }
  std::string Str() {
    uint32_t n = 0;
    if (in.size() < sizeof(n)) return ok = false, "";
    std::memcpy(&n, in.data(), sizeof(n));
    in.remove_prefix(sizeof(n));
    if (in.size() < n) return ok = false, "";
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};

}  // namespace

void RequestCache::Persist() {
  if (options_.path.empty()) return;
  absl::MutexLock persist(&persist_mu_);
  std::string out = kMagic;
  {
    absl::MutexLock lock(&mu_);
    // The newest finished answers that fit, written oldest first.
    std::vector<const std::pair<const Key, Entry>*> kept;
    size_t bytes = 0;
    for (auto o = order_.rbegin(); o != order_.rend(); ++o) {
      auto it = entries_.find(*o);
      if (!it->second.done) continue;
      const Entry& e = it->second;
      size_t size = it->first.first.size() + it->first.second.size() + e.fingerprint.size() +
                    e.result.status.message().size() + e.result.response.size() + 40;
      if (bytes + size > options_.max_persisted_bytes) break;
      bytes += size;
      kept.push_back(&*it);
    }
    out.reserve(out.size() + bytes);
    for (auto k = kept.rbegin(); k != kept.rend(); ++k) {
      const auto& [key, e] = **k;
      PutStr(&out, key.first);
      PutStr(&out, key.second);
      PutStr(&out, e.fingerprint);
      PutU64(&out, static_cast<uint64_t>(absl::ToUnixNanos(e.started)));
      PutU64(&out, static_cast<uint64_t>(e.result.status.code()));
      PutStr(&out, std::string(e.result.status.message()));
      PutStr(&out, e.result.response);
    }
  }
  absl::Status st = WriteFileAtomic(options_.path, out, 0600, /*durable=*/false);
  if (!st.ok() && !persist_failed_) {
    spdlog::warn("client_request_id answers not kept across restarts: {}", st);
  } else if (st.ok() && persist_failed_) {
    spdlog::info("client_request_id answers kept across restarts again");
  }
  persist_failed_ = !st.ok();
}

absl::Status RequestCache::Load() {
  if (options_.path.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> text = ReadFile(options_.path);
  if (!text.ok()) return absl::IsNotFound(text.status()) ? absl::OkStatus() : text.status();
  auto bad = [&] { return absl::DataLossError(absl::StrCat(options_.path, " is not a request-id file")); };
  Reader r{*text};
  if (!absl::StartsWith(r.in, kMagic)) return bad();
  r.in.remove_prefix(std::strlen(kMagic));
  struct Loaded {
    Key key;
    Entry entry;
  };
  std::vector<Loaded> loaded;
  while (r.ok && !r.in.empty()) {
    Loaded l;
    l.key.first = r.Str();
    l.key.second = r.Str();
    l.entry.fingerprint = r.Str();
    l.entry.started = absl::FromUnixNanos(static_cast<int64_t>(r.U64()));
    uint64_t code = r.U64();
    std::string message = r.Str();
    l.entry.result.response = r.Str();
    if (!r.ok || code > static_cast<uint64_t>(absl::StatusCode::kUnauthenticated)) return bad();
    l.entry.result.status = absl::Status(static_cast<absl::StatusCode>(code), message);
    l.entry.done = true;
    loaded.push_back(std::move(l));
  }
  if (!r.ok) return bad();
  absl::MutexLock lock(&mu_);
  for (Loaded& l : loaded) {
    if (entries_.count(l.key) > 0) continue;
    order_.push_back(l.key);
    Entry& e = entries_[l.key] = std::move(l.entry);
    e.order = std::prev(order_.end());
    bytes_ += e.fingerprint.size() + e.result.response.size() + e.result.status.message().size();
  }
  EvictLocked(options_.now());
  return absl::OkStatus();
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
