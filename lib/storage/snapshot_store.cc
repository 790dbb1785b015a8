#include "lib/storage/snapshot_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "nlohmann/json.hpp"
#include "openssl/evp.h"
#include "spdlog/spdlog.h"

namespace fcvm::storage {

using json = nlohmann::json;

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    return absl::InternalError("sha256: cannot initialise OpenSSL digest");
  }
  std::string buf(1 << 20, '\0');
  absl::Status result;
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      result = ErrnoError(absl::StrCat("read ", path));
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  RETURN_IF_ERROR(result);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), len));
}

std::string RecordToJson(const SnapshotRecord& r) {
  json j;
  j["id"] = r.id;
  j["name"] = r.name;
  j["labels"] = r.labels;
  j["source_vm_id"] = r.source_vm_id;
  j["config"] = json::parse(r.config_json.empty() ? "{}" : r.config_json, nullptr, false);
  j["firecracker_version"] = r.firecracker_version;
  if (!r.host_json.empty()) j["host"] = json::parse(r.host_json, nullptr, false);
  j["jailed"] = r.jailed;
  j["disk_ids"] = r.disk_ids;
  j["memory_bytes"] = r.memory_bytes;
  if (r.memory_page_size != 0) j["memory_page_size"] = r.memory_page_size;
  if (!r.parent_id.empty()) j["parent_id"] = r.parent_id;
  j["memory_allocated_bytes"] = r.memory_allocated_bytes;
  j["vmstate_bytes"] = r.vmstate_bytes;
  j["memory_sha256"] = r.memory_sha256;
  j["vmstate_sha256"] = r.vmstate_sha256;
  j["created_at_unix_ns"] = absl::ToUnixNanos(r.created_at);
  j["create_duration_ns"] = absl::ToInt64Nanoseconds(r.create_duration);
  return j.dump(2);
}

absl::StatusOr<SnapshotRecord> RecordFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("snapshot record is not a JSON object");
  SnapshotRecord r;
  try {
    r.id = j.at("id").get<std::string>();
    r.name = j.at("name").get<std::string>();
    r.labels = j.value("labels", std::map<std::string, std::string>{});
    r.source_vm_id = j.value("source_vm_id", "");
    r.config_json = j.contains("config") ? j["config"].dump() : "{}";
    r.firecracker_version = j.value("firecracker_version", "");
    if (j.contains("host") && j["host"].is_object()) r.host_json = j["host"].dump();
    r.jailed = j.value("jailed", false);
    r.disk_ids = j.value("disk_ids", std::vector<std::string>{});
    r.memory_bytes = j.at("memory_bytes").get<uint64_t>();
    r.vmstate_bytes = j.at("vmstate_bytes").get<uint64_t>();
    r.memory_page_size = j.value("memory_page_size", uint64_t{0});
    r.parent_id = j.value("parent_id", "");
    r.memory_allocated_bytes = j.value("memory_allocated_bytes", uint64_t{0});
    r.memory_sha256 = j.value("memory_sha256", "");
    r.vmstate_sha256 = j.value("vmstate_sha256", "");
    r.created_at = absl::FromUnixNanos(j.value("created_at_unix_ns", int64_t{0}));
    r.create_duration = absl::Nanoseconds(j.value("create_duration_ns", int64_t{0}));
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("snapshot record: ", e.what()));
  }
  return r;
}

absl::StatusOr<std::unique_ptr<SnapshotStore>> SnapshotStore::Open(const std::string& root) {
  RETURN_IF_ERROR(Annotate(MakeDirs(root, 0700), "snapshot store"));
  std::unique_ptr<SnapshotStore> store(new SnapshotStore(root));
  DIR* dir = opendir(root.c_str());
  if (dir == nullptr) return ErrnoError(absl::StrCat("opendir ", root));
  std::vector<std::string> names;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  absl::MutexLock lock(&store->mu_);
  for (const std::string& name : names) {
    std::string path = absl::StrCat(root, "/", name);
    if (absl::StartsWith(name, ".tmp-") || absl::StartsWith(name, ".trash-")) {
      spdlog::info("snapshot store: removing leftover {}", path);
      if (absl::Status st = RemoveTree(path); !st.ok()) spdlog::warn("snapshot store: {}", st);
      continue;
    }
    absl::StatusOr<std::string> text = ReadFile(path + "/meta.json");
    if (!text.ok()) {
      spdlog::warn("snapshot store: skipping {}: {}", path, text.status());
      continue;
    }
    absl::StatusOr<SnapshotRecord> record = RecordFromJson(*text);
    if (!record.ok() || record->id != name) {
      spdlog::warn("snapshot store: skipping {}: bad meta.json", path);
      continue;
    }
    store->by_id_[record->id] = *std::move(record);
  }
  return store;
}

const SnapshotRecord* SnapshotStore::FindLocked(const std::string& ref) const {
  auto it = by_id_.find(ref);
  if (it != by_id_.end()) return &it->second;
  for (const auto& [id, record] : by_id_) {
    if (record.name == ref) return &record;
  }
  return nullptr;
}

absl::StatusOr<PendingSnapshot> SnapshotStore::Begin(const std::string& id, const std::string& name) {
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [existing_id, record] : by_id_) {
      if (record.name == name)
        return absl::AlreadyExistsError(absl::StrCat("snapshot name '", name, "' is taken"));
    }
    if (pending_names_.count(name) > 0) {
      return absl::AlreadyExistsError(absl::StrCat("snapshot name '", name, "' is being created"));
    }
    pending_names_[name] = id;
  }
  PendingSnapshot pending{id, name, absl::StrCat(root_, "/.tmp-", id)};
  absl::Status st = MakeDirs(pending.dir + "/disks", 0700);
  if (st.ok()) st = MakeDirs(pending.dir + "/pager", 0700);
  if (!st.ok()) {
    Abort(pending);
    return st;
  }
  return pending;
}

absl::StatusOr<SnapshotRecord> SnapshotStore::Commit(const PendingSnapshot& pending, SnapshotRecord record) {
  record.id = pending.id;
  record.name = pending.name;
  struct stat st;
  std::string vmstate = VmstatePath(pending.dir);
  std::string memory = MemoryPath(pending.dir);
  if (stat(vmstate.c_str(), &st) < 0) return ErrnoError(absl::StrCat("snapshot vmstate ", vmstate));
  record.vmstate_bytes = static_cast<uint64_t>(st.st_size);
  if (stat(memory.c_str(), &st) < 0) return ErrnoError(absl::StrCat("snapshot memory ", memory));
  record.memory_bytes = static_cast<uint64_t>(st.st_size);
  record.memory_allocated_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
  ASSIGN_OR_RETURN(record.vmstate_sha256, Sha256File(vmstate));
  if (record.parent_id.empty()) {
    ASSIGN_OR_RETURN(record.memory_sha256, Sha256File(memory));
  } else {
    record.memory_sha256.clear();
    absl::MutexLock lock(&mu_);
    if (by_id_.count(record.parent_id) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("snapshot ", record.parent_id, " (the layer under ", pending.name, ") is gone"));
    }
  }
  if (record.created_at == absl::Time()) record.created_at = absl::Now();
  RETURN_IF_ERROR(WriteFileAtomic(pending.dir + "/meta.json", RecordToJson(record), 0600));
  std::string final_dir = Dir(pending.id);
  if (rename(pending.dir.c_str(), final_dir.c_str()) < 0) {
    return ErrnoError(absl::StrCat("rename ", pending.dir, " -> ", final_dir));
  }
  UniqueFd root_fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (root_fd) fsync(root_fd.get());
  absl::MutexLock lock(&mu_);
  pending_names_.erase(pending.name);
  by_id_[record.id] = record;
  return record;
}

void SnapshotStore::Abort(const PendingSnapshot& pending) {
  if (absl::Status st = RemoveTree(pending.dir); !st.ok()) spdlog::warn("snapshot store: {}", st);
  absl::MutexLock lock(&mu_);
  pending_names_.erase(pending.name);
}

absl::StatusOr<SnapshotRecord> SnapshotStore::Get(const std::string& ref) const {
  absl::MutexLock lock(&mu_);
  const SnapshotRecord* record = FindLocked(ref);
  if (record == nullptr) return absl::NotFoundError(absl::StrCat("snapshot '", ref, "' not found"));
  return *record;
}

std::vector<SnapshotRecord> SnapshotStore::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<SnapshotRecord> out;
  for (const auto& [id, record] : by_id_) out.push_back(record);
  return out;
}

absl::Status SnapshotStore::Delete(const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return absl::NotFoundError(absl::StrCat("snapshot '", id, "' not found"));
    for (const auto& [other, r] : by_id_) {
      if (r.parent_id == id) {
        return absl::FailedPreconditionError(absl::StrCat("snapshot ", it->second.name,
                                                          " is the memory layer under snapshot ", r.name,
                                                          "; delete that one first"));
      }
    }
    by_id_.erase(it);
  }
  std::string trash = absl::StrCat(root_, "/.trash-", id);
  std::string dir = Dir(id);
  if (rename(dir.c_str(), trash.c_str()) < 0) return ErrnoError(absl::StrCat("rename ", dir, " -> ", trash));
  return RemoveTree(trash);
}

std::vector<std::string> SnapshotStore::Children(const std::string& id) const {
  std::vector<std::string> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [other, r] : by_id_) {
    if (r.parent_id == id) out.push_back(other);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> SnapshotStore::MemoryLayers(const SnapshotRecord& record) const {
  std::vector<std::string> layers{MemoryPath(Dir(record.id))};
  std::string parent = record.parent_id;
  absl::MutexLock lock(&mu_);
  while (!parent.empty()) {
    auto it = by_id_.find(parent);
    if (it == by_id_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("snapshot ", record.name, ": its memory layer ", parent, " is gone"));
    }
    if (layers.size() > 1024) {
      return absl::DataLossError(absl::StrCat("snapshot ", record.name, ": its memory layers form a loop"));
    }
    layers.push_back(MemoryPath(Dir(parent)));
    parent = it->second.parent_id;
  }
  std::reverse(layers.begin(), layers.end());
  return layers;
}

absl::Status SnapshotStore::ReplaceWithWholeMemory(const std::string& id, const std::string& merged_memory) {
  SnapshotRecord updated;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return absl::NotFoundError(absl::StrCat("snapshot '", id, "' not found"));
    updated = it->second;
  }
  struct stat st;
  if (stat(merged_memory.c_str(), &st) < 0) return ErrnoError(absl::StrCat("stat ", merged_memory));
  if (static_cast<uint64_t>(st.st_size) != updated.memory_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("merged memory ", merged_memory, " has ", st.st_size,
                                                   " bytes, the snapshot ", updated.memory_bytes));
  }
  updated.parent_id.clear();
  updated.memory_allocated_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
  ASSIGN_OR_RETURN(updated.memory_sha256, Sha256File(merged_memory));
  // The whole file first: a crash between the two leaves a whole memory file
  // under a record that still names its parent (still right: the top layer
  // hides everything under it).
  const std::string dir = Dir(id);
  if (rename(merged_memory.c_str(), MemoryPath(dir).c_str()) < 0) {
    return ErrnoError(absl::StrCat("rename ", merged_memory, " -> ", MemoryPath(dir)));
  }
  RETURN_IF_ERROR(WriteFileAtomic(dir + "/meta.json", RecordToJson(updated), 0600));
  absl::MutexLock lock(&mu_);
  by_id_[id] = updated;
  return absl::OkStatus();
}

}  // namespace fcvm::storage
