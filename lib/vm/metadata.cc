// Per-VM metadata in Firecracker's metadata service (MMDS).
//
// What a VM's MMDS holds: the caller's JSON object, plus fcvm's own keys
// under "fcvm" (the one key a caller may not use): the VM's id, name,
// labels, snapshot id and clone index, and its network addresses. A snapshot
// keeps the MMDS configuration but not its data, so a clone starts with an
// empty store; CloneOne puts the clone's own document in after the load and
// before the clone's vCPUs run (the load leaves it paused), and RunVm before
// InstanceStart. GetMetadata reads the store back from Firecracker;
// SetMetadata replaces the caller's part and keeps fcvm's.

#include <optional>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"
#include "lib/vm/validate.h"
#include "nlohmann/json.hpp"

namespace fcvm::vm {
namespace {

using json = nlohmann::json;

json FcvmKeys(const VmInfo& info, std::optional<uint32_t> clone_index) {
  json f;
  f["vm_id"] = info.id;
  f["name"] = info.name;
  f["labels"] = json::object();
  for (const auto& [k, v] : info.labels) f["labels"][k] = v;
  if (!info.snapshot_id.empty()) f["snapshot_id"] = info.snapshot_id;
  if (clone_index.has_value()) f["clone_index"] = *clone_index;
  if (!info.network.host_ip.empty()) {
    f["network"] = {{"guest_ip", info.network.guest_ip},
                    {"host_ip", info.network.host_ip},
                    {"guest_mac", info.network.guest_mac}};
  }
  return f;
}

absl::StatusOr<json> ParseUser(absl::string_view user_json) {
  if (user_json.empty()) return json::object();
  json j = json::parse(user_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("metadata: not valid JSON");
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("metadata: must be a JSON object, not ", j.type_name()));
  }
  if (j.contains(kMetadataNamespace)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata: the key \"", kMetadataNamespace, "\" is fcvm's own (its keys go there)"));
  }
  return j;
}

absl::StatusOr<std::string> Compose(json user, json fcvm_keys) {
  user[kMetadataNamespace] = std::move(fcvm_keys);
  std::string doc = user.dump();
  if (doc.size() > kMaxMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrCat("metadata: ", doc.size(),
                                                   " bytes with fcvm's keys, more than ", kMaxMetadataBytes,
                                                   " (Firecracker's MMDS limit)"));
  }
  return doc;
}

}  // namespace

absl::Status ValidateMetadata(absl::string_view user_json) {
  ASSIGN_OR_RETURN(json user, ParseUser(user_json));
  // With room for fcvm's keys (ids, 64-byte name, labels up to 16 KiB).
  std::string doc = user.dump();
  if (doc.size() > kMaxMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrCat("metadata: ", doc.size(), " bytes, more than ",
                                                   kMaxMetadataBytes, " (Firecracker's MMDS limit)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ComposeMetadata(const VmInfo& info, absl::string_view user_json,
                                            std::optional<uint32_t> clone_index) {
  ASSIGN_OR_RETURN(json user, ParseUser(user_json));
  return Compose(std::move(user), FcvmKeys(info, clone_index));
}

namespace {

// The VM's entry, its operation lock held, with a process that can answer.
absl::StatusOr<std::shared_ptr<VmEntry>> LockedWithProcess(Core& core, const std::string& ref) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core.registry.Find(ref));
  e->op.Lock();
  VmInfo info = core.registry.Info(*e);
  absl::Status st;
  if (e->deleting) {
    st = absl::NotFoundError(absl::StrCat("vm '", ref, "' not found"));
  } else if (info.state != VmState::kRunning && info.state != VmState::kPaused) {
    st = absl::FailedPreconditionError(absl::StrCat("vm ", info.id, " is ", StateName(info.state),
                                                    ": its metadata lives in its running Firecracker"));
  } else if (e->vmm == nullptr) {
    st = absl::FailedPreconditionError(absl::StrCat("vm ", info.id, " has no process"));
  }
  if (!st.ok()) {
    e->op.Unlock();
    return st;
  }
  return e;
}

}  // namespace

absl::StatusOr<std::string> GetMetadata(Core& core, const std::string& ref) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, LockedWithProcess(core, ref));
  absl::StatusOr<std::string> doc = e->vmm->GetMmds();
  const std::string id = core.registry.Info(*e).id;
  e->op.Unlock();
  if (!doc.ok()) return Annotate(doc.status(), absl::StrCat("metadata of vm ", id));
  return doc;
}

absl::StatusOr<std::string> SetMetadata(Core& core, const std::string& ref, const std::string& user_json) {
  ASSIGN_OR_RETURN(json user, ParseUser(user_json));
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, LockedWithProcess(core, ref));
  absl::Cleanup unlock = [&e] { e->op.Unlock(); };
  VmInfo info = core.registry.Info(*e);
  // fcvm's keys as they were set when the VM was made (a clone's index is
  // known only then); rebuilt when the store has none.
  json fcvm_keys = FcvmKeys(info, std::nullopt);
  if (absl::StatusOr<std::string> now = e->vmm->GetMmds(); now.ok()) {
    json j = json::parse(*now, nullptr, false);
    if (j.is_object() && j.contains(kMetadataNamespace) && j[kMetadataNamespace].is_object()) {
      fcvm_keys = j[kMetadataNamespace];
    }
  }
  ASSIGN_OR_RETURN(std::string doc, Compose(std::move(user), std::move(fcvm_keys)));
  RETURN_IF_ERROR(Annotate(e->vmm->PutMmds(doc), absl::StrCat("set metadata of vm ", info.id)));
  return doc;
}

}  // namespace fcvm::vm
