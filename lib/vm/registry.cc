#include "lib/vm/registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "lib/vm/record.h"

namespace fcvm::vm {
namespace {

bool MatchesLabels(const Labels& labels, const Labels& selector) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

bool Alive(VmState s) { return s == VmState::kCreating || s == VmState::kRunning || s == VmState::kPaused; }

}  // namespace

// ---- names ------------------------------------------------------------------

Registry::Reservation& Registry::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    if (registry_ != nullptr) registry_->Release(id_, names_);
    registry_ = std::exchange(other.registry_, nullptr);
    id_ = other.id_;
    names_ = std::move(other.names_);
    other.names_.clear();
  }
  return *this;
}

Registry::Reservation::~Reservation() {
  if (registry_ != nullptr) registry_->Release(id_, names_);
}

bool Registry::NameTakenLocked(const std::string& name) const {
  return names_.contains(name) || reserved_.contains(name);
}

absl::StatusOr<Registry::Reservation> Registry::ReserveName(const std::string& name) {
  RETURN_IF_ERROR(ValidateName("vm name", name));
  absl::MutexLock lock(&mu_);
  if (names_.contains(name)) return absl::AlreadyExistsError(absl::StrCat("vm name '", name, "' is taken"));
  if (reserved_.contains(name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("vm name '", name, "' is being given to a VM being created"));
  }
  Reservation r;
  r.registry_ = this;
  r.id_ = next_reservation_++;
  r.names_.push_back(name);
  reserved_[name] = r.id_;
  return r;
}

absl::StatusOr<Registry::Reservation> Registry::ReserveCloneNames(const std::string& prefix, uint32_t count) {
  absl::MutexLock lock(&mu_);
  const std::string head = prefix + "-";
  int64_t next = 0;
  auto consider = [&](const std::string& n) {
    int64_t k;
    if (absl::StartsWith(n, head) && absl::SimpleAtoi(n.substr(head.size()), &k) && k >= 0) {
      next = std::max(next, k + 1);
    }
  };
  for (const auto& [n, id] : names_) consider(n);
  for (const auto& [n, r] : reserved_) consider(n);
  Reservation r;
  r.registry_ = this;
  r.id_ = next_reservation_++;
  for (uint32_t i = 0; i < count; ++i) {
    std::string n = absl::StrCat(head, next + i);
    // Past every "<prefix>-<k>" in use, so never taken; checked all the same.
    if (NameTakenLocked(n)) {
      for (const std::string& taken : r.names_) reserved_.erase(taken);
      r.registry_ = nullptr;
      return absl::AlreadyExistsError(absl::StrCat("vm name '", n, "' is taken"));
    }
    reserved_[n] = r.id_;
    r.names_.push_back(std::move(n));
  }
  return r;
}

void Registry::Release(uint64_t reservation, const std::vector<std::string>& names) {
  absl::MutexLock lock(&mu_);
  for (const std::string& n : names) {
    auto it = reserved_.find(n);
    if (it != reserved_.end() && it->second == reservation) reserved_.erase(it);
  }
}

// ---- VMs --------------------------------------------------------------------

absl::Status Registry::Insert(const std::shared_ptr<VmEntry>& entry, Reservation& reservation,
                              bool write_record) {
  const std::string name = Info(*entry).name;
  {
    absl::MutexLock lock(&mu_);
    auto it = reserved_.find(name);
    if (it == reserved_.end() || it->second != reservation.id_ || reservation.registry_ != this) {
      return absl::InternalError(absl::StrCat("vm name '", name, "' was not reserved by this request"));
    }
  }
  // The record first (only this request can consume its reservation
  // meanwhile).
  if (write_record) RETURN_IF_ERROR(Persist(*entry));
  absl::MutexLock lock(&mu_);
  reserved_.erase(name);
  auto& held = reservation.names_;
  held.erase(std::remove(held.begin(), held.end(), name), held.end());
  names_[name] = entry->info.id;
  vms_[entry->info.id] = entry;
  return absl::OkStatus();
}

void Registry::Remove(const std::string& id) {
  std::shared_ptr<VmEntry> gone;  // destroyed outside the lock
  absl::MutexLock lock(&mu_);
  auto it = vms_.find(id);
  if (it == vms_.end()) return;
  gone = it->second;
  auto n = names_.find(gone->info.name);
  if (n != names_.end() && n->second == id) names_.erase(n);
  vms_.erase(it);
}

absl::StatusOr<std::shared_ptr<VmEntry>> Registry::Find(const std::string& ref) const {
  absl::MutexLock lock(&mu_);
  auto it = vms_.find(ref);
  if (it != vms_.end()) return it->second;
  auto n = names_.find(ref);
  if (n != names_.end()) {
    auto v = vms_.find(n->second);
    if (v != vms_.end()) return v->second;
  }
  return absl::NotFoundError(absl::StrCat("vm '", ref, "' not found"));
}

std::vector<std::shared_ptr<VmEntry>> Registry::All() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<VmEntry>> out;
  for (const auto& [id, e] : vms_) out.push_back(e);
  return out;
}

std::vector<VmInfo> Registry::List(const Labels& selector, const std::vector<VmState>& states,
                                   const std::string& snapshot_id) const {
  std::vector<VmInfo> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : vms_) {
      const VmInfo& v = e->info;
      if (!MatchesLabels(v.labels, selector)) continue;
      if (!states.empty() && std::find(states.begin(), states.end(), v.state) == states.end()) continue;
      if (!snapshot_id.empty() && v.snapshot_id != snapshot_id) continue;
      out.push_back(v);
    }
  }
  std::sort(out.begin(), out.end(), [](const VmInfo& a, const VmInfo& b) {
    return a.created_at != b.created_at ? a.created_at < b.created_at : a.id < b.id;
  });
  return out;
}

std::map<VmState, size_t> Registry::CountByState() const {
  std::map<VmState, size_t> out;
  for (VmState s : kAllStates) out[s] = 0;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, e] : vms_) ++out[e->info.state];
  return out;
}

VmInfo Registry::Info(const VmEntry& entry) const {
  absl::MutexLock lock(&mu_);
  return entry.info;
}

void Registry::Update(VmEntry& entry, const std::function<void(VmInfo&)>& change) {
  absl::MutexLock lock(&mu_);
  change(entry.info);
}

absl::Status Registry::Transition(VmEntry& entry, VmState to, absl::string_view verb,
                                  const std::string& message) {
  VmState from;
  {
    absl::MutexLock lock(&mu_);
    from = entry.info.state;
    if (from == to) return absl::OkStatus();
    RETURN_IF_ERROR(CheckTransition(entry.info.id, from, to, verb));
    entry.info.state = to;
    if (to == VmState::kStopped || to == VmState::kFailed) {
      entry.info.error = message;
    } else if (to != VmState::kStopping) {
      entry.info.error.clear();
    }
  }
  absl::Status persisted = Persist(entry);
  Event ev;
  ev.kind = EventKind::kVmState;
  ev.vm_id = entry.info.id;  // id and snapshot id never change
  ev.snapshot_id = entry.info.snapshot_id;
  ev.state = to;
  ev.previous_state = from;
  ev.message = message;
  events_->Publish(std::move(ev));
  return Annotate(persisted, "vm record");
}

absl::Status Registry::Persist(const VmEntry& entry) {
  std::string json = RecordToJson(Info(entry));
  return host_->WriteRecord(RecordPath(entry.dir), json);
}

// ---- snapshots in use -------------------------------------------------------

Registry::SnapshotUse& Registry::SnapshotUse::operator=(SnapshotUse&& other) noexcept {
  if (this != &other) {
    if (registry_ != nullptr) registry_->EndUse(id_, deleting_);
    registry_ = std::exchange(other.registry_, nullptr);
    id_ = std::move(other.id_);
    deleting_ = other.deleting_;
  }
  return *this;
}

Registry::SnapshotUse::~SnapshotUse() {
  if (registry_ != nullptr) registry_->EndUse(id_, deleting_);
}

absl::StatusOr<Registry::SnapshotUse> Registry::UseSnapshot(const std::string& snapshot_id) {
  absl::MutexLock lock(&mu_);
  if (snapshots_deleting_.count(snapshot_id) > 0) {
    return absl::NotFoundError(absl::StrCat("snapshot ", snapshot_id, " is being deleted"));
  }
  ++snapshot_users_[snapshot_id];
  SnapshotUse use;
  use.registry_ = this;
  use.id_ = snapshot_id;
  return use;
}

absl::StatusOr<Registry::SnapshotUse> Registry::BeginSnapshotDeletion(const std::string& snapshot_id,
                                                                      const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto users = snapshot_users_.find(snapshot_id);
  if (users != snapshot_users_.end() && users->second > 0) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", name, " is being cloned by ",
                                                      users->second,
                                                      " request(s) in flight; delete it once they finish"));
  }
  if (!snapshots_deleting_.insert(snapshot_id).second) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", name, " is already being deleted"));
  }
  SnapshotUse guard;
  guard.registry_ = this;
  guard.id_ = snapshot_id;
  guard.deleting_ = true;
  return guard;
}

void Registry::EndUse(const std::string& id, bool deleting) {
  absl::MutexLock lock(&mu_);
  if (deleting) {
    snapshots_deleting_.erase(id);
    return;
  }
  auto it = snapshot_users_.find(id);
  if (it != snapshot_users_.end() && --it->second <= 0) snapshot_users_.erase(it);
}

std::vector<std::shared_ptr<VmEntry>> Registry::ClonesOf(const std::string& snapshot_id) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<VmEntry>> out;
  for (const auto& [id, e] : vms_) {
    if (e->info.snapshot_id == snapshot_id) out.push_back(e);
  }
  return out;
}

uint32_t Registry::LiveCloneCount(const std::string& snapshot_id) const {
  absl::MutexLock lock(&mu_);
  uint32_t n = 0;
  for (const auto& [id, e] : vms_) {
    if (e->info.snapshot_id == snapshot_id && Alive(e->info.state)) ++n;
  }
  return n;
}

}  // namespace fcvm::vm
