#include "lib/firecracker/uid_pool.h"

#include <fcntl.h>
#include <sys/file.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "nlohmann/json.hpp"

namespace fcvm::firecracker {

absl::StatusOr<std::unique_ptr<UidPool>> UidPool::Open(std::string path, UidRange range) {
  const uint64_t end = uint64_t{range.base} + range.count;  // one past the last id
  if (range.count == 0) return absl::InvalidArgumentError("uid range: empty");
  if (range.base == 0 || end > 0xffffffffull || (range.base <= 65534 && end > 65534)) {
    return absl::InvalidArgumentError(
        absl::StrCat("uid range ", range.base, "..", end - 1, " includes 0, 65534 (nobody) or 4294967295"));
  }
  std::unique_ptr<UidPool> p(new UidPool(std::move(path), range));
  const std::string lock_path = absl::StrCat(p->path_, ".lock");
  p->lock_.Reset(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!p->lock_) return ErrnoError(absl::StrCat("open ", lock_path));
  if (flock(p->lock_.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("uid pool ", p->path_, " is in use by another process (", lock_path, ")"));
    }
    return ErrnoError(absl::StrCat("flock ", lock_path));
  }
  RETURN_IF_ERROR(p->Load());
  return p;
}

absl::Status UidPool::Load() {
  absl::StatusOr<std::string> text = ReadFile(path_);
  if (absl::IsNotFound(text.status())) return absl::OkStatus();
  if (!text.ok()) return Annotate(text.status(), "uid pool");
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("uid pool file ", path_, ": ", why));
  };
  if (j.is_discarded() || !j.is_object() || !j.contains("leases") || !j["leases"].is_object()) {
    return bad("not a JSON object with \"leases\"");
  }
  absl::MutexLock lock(&mu_);
  std::vector<std::string> outside;
  for (const auto& [owner, id] : j["leases"].items()) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > 0xffffffffull) {
      return bad(absl::StrCat("lease of ", owner, " is not a uid"));
    }
    uint32_t uid = id.get<uint32_t>();
    if (owner.empty()) return bad("lease without owner");
    if (!by_id_.emplace(uid, owner).second) return bad(absl::StrCat("uid ", uid, " leased twice"));
    by_owner_[owner] = uid;
    if (uid < range_.base || uid - range_.base >= range_.count)
      outside.push_back(absl::StrCat(owner, "=", uid));
  }
  if (!outside.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("uid pool file ", path_, " holds leases outside the configured range ", range_.base,
                     "..", uint64_t{range_.base} + range_.count - 1, " (", outside.front(),
                     outside.size() > 1 ? ", ..." : "", "); stop those VMs or keep the old range"));
  }
  if (j.contains("next") && j["next"].is_number_unsigned()) {
    uint64_t next = j["next"].get<uint64_t>();
    if (next >= range_.base && next - range_.base < range_.count)
      next_ = static_cast<uint32_t>(next - range_.base);
  }
  return absl::OkStatus();
}

absl::Status UidPool::Persist() const {
  nlohmann::json leases = nlohmann::json::object();
  for (const auto& [owner, id] : by_owner_) leases[owner] = id;
  nlohmann::json j = {{"base", range_.base},
                      {"count", range_.count},
                      {"next", uint64_t{range_.base} + next_},
                      {"leases", leases}};
  return Annotate(WriteFileAtomic(path_, j.dump(2) + "\n", 0600, /*durable=*/false), "persist uid pool");
}

absl::StatusOr<uint32_t> UidPool::Lease(const std::string& owner) {
  if (owner.empty()) return absl::InvalidArgumentError("uid lease: empty owner");
  absl::MutexLock lock(&mu_);
  if (auto it = by_owner_.find(owner); it != by_owner_.end()) return it->second;
  if (by_id_.size() >= range_.count) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid pool ", path_, ": all ", range_.count, " ids from ", range_.base, " are leased"));
  }
  uint32_t offset = next_;
  while (by_id_.count(range_.base + offset)) offset = (offset + 1) % range_.count;
  const uint32_t uid = range_.base + offset;
  const uint32_t old_next = next_;
  by_id_[uid] = owner;
  by_owner_[owner] = uid;
  next_ = (offset + 1) % range_.count;
  if (absl::Status st = Persist(); !st.ok()) {
    by_id_.erase(uid);
    by_owner_.erase(owner);
    next_ = old_next;
    return st;
  }
  return uid;
}

absl::Status UidPool::Release(const std::string& owner) {
  absl::MutexLock lock(&mu_);
  auto it = by_owner_.find(owner);
  if (it == by_owner_.end()) return absl::OkStatus();
  const uint32_t uid = it->second;
  by_owner_.erase(it);
  by_id_.erase(uid);
  if (absl::Status st = Persist(); !st.ok()) {
    by_owner_[owner] = uid;
    by_id_[uid] = owner;
    return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> UidPool::Lookup(const std::string& owner) const {
  absl::MutexLock lock(&mu_);
  auto it = by_owner_.find(owner);
  if (it == by_owner_.end()) return absl::NotFoundError(absl::StrCat("no uid lease for ", owner));
  return it->second;
}

std::map<std::string, uint32_t> UidPool::All() const {
  absl::MutexLock lock(&mu_);
  return by_owner_;
}

absl::StatusOr<std::vector<std::string>> UidPool::Reconcile(const std::set<std::string>& live) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> dropped;
  for (const auto& [owner, id] : by_owner_) {
    if (!live.count(owner)) dropped.push_back(owner);
  }
  if (dropped.empty()) return dropped;
  std::map<std::string, uint32_t> old_owner = by_owner_;
  std::map<uint32_t, std::string> old_id = by_id_;
  for (const std::string& owner : dropped) {
    by_id_.erase(by_owner_[owner]);
    by_owner_.erase(owner);
  }
  if (absl::Status st = Persist(); !st.ok()) {
    by_owner_ = std::move(old_owner);
    by_id_ = std::move(old_id);
    return st;
  }
  return dropped;
}

}  // namespace fcvm::firecracker
