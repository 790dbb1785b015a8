#pragma once

// The snapshot store: one directory per snapshot under <state>/snapshots.
//
//   <root>/<id>/meta.json      SnapshotRecord (written last)
//   <root>/<id>/vmstate        Firecracker's vmstate file
//   <root>/<id>/memory         guest memory file
//   <root>/<id>/disks/<drive>  the source VM's writable drives at snapshot time
//   <root>/<id>/pager/         page-server files (zero-page map, working set)
//
// Creation is atomic: a snapshot is built in <root>/.tmp-<id> and renamed
// into place once complete, so a crash or error mid-way leaves no visible half
// snapshot (leftovers are removed by Open). Deletion renames to
// <root>/.trash-<id> first, for the same reason. A committed snapshot is
// immutable apart from the page server's files.
//
// Thread-safe.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fcvm::storage {

struct SnapshotRecord {
  std::string id;
  std::string name;
  std::map<std::string, std::string> labels;
  std::string source_vm_id;
  // The source VM's configuration, as JSON owned by lib/vm.
  std::string config_json;
  std::string firecracker_version;
  // Where it was made (Firecracker, snapshot format, CPU, kernel, page
  // size), as a JSON object owned by lib/firecracker (snapshot_compat.h);
  // empty for snapshots made before fcvm recorded it.
  std::string host_json;
  std::vector<std::string> disk_ids;  // files under disks/
  // Made by a jailed VM: its baked-in paths are jail paths.
  bool jailed = false;
  // Page size of the guest memory the memory file holds, in bytes (4096, or
  // 2 MiB for a hugetlbfs guest, which Firecracker restores only through a
  // page server); 0 in records written before it was recorded.
  uint64_t memory_page_size = 0;
  // Layered memory (a live fork's Diff snapshot): the snapshot whose memory
  // lies under this one's. The memory file then holds only the pages written
  // since that one (a sparse file: a hole is a page to read from the layer
  // below). Empty: the memory file is whole.
  std::string parent_id;
  // Filled in by Commit (memory_sha256 stays empty for a layer: it is the
  // hash of nothing a VM ever had).
  // Pages the memory file really holds (its allocated blocks), in bytes.
  uint64_t memory_allocated_bytes = 0;
  uint64_t memory_bytes = 0;
  uint64_t vmstate_bytes = 0;
  std::string memory_sha256;
  std::string vmstate_sha256;
  absl::Time created_at;
  absl::Duration create_duration;
};

// A snapshot being built; its files go into `dir`.
struct PendingSnapshot {
  std::string id;
  std::string name;
  std::string dir;
};

class SnapshotStore {
 public:
  // Opens (creating) the store at `root`, removes leftovers of interrupted
  // creations and deletions, and loads every snapshot's record. A snapshot
  // whose record cannot be read is skipped with a warning (never deleted).
  static absl::StatusOr<std::unique_ptr<SnapshotStore>> Open(const std::string& root);

  // Reserves `id` and `name` (AlreadyExists if a snapshot or a pending one has
  // the name) and creates the temporary directory with disks/ and pager/.
  absl::StatusOr<PendingSnapshot> Begin(const std::string& id, const std::string& name);
  // Checks that vmstate and memory exist, fills in sizes, checksums and
  // created_at, writes meta.json and renames the directory into place.
  absl::StatusOr<SnapshotRecord> Commit(const PendingSnapshot& pending, SnapshotRecord record);
  // Removes the temporary directory and releases the name.
  void Abort(const PendingSnapshot& pending);

  // By id or name. NotFound "snapshot 'x' not found".
  absl::StatusOr<SnapshotRecord> Get(const std::string& ref) const;
  std::vector<SnapshotRecord> List() const;
  // NotFound for an unknown id; FailedPrecondition while another snapshot's
  // memory lies on it (parent_id).
  absl::Status Delete(const std::string& id);
  // The snapshots whose memory lies directly on snapshot `id`.
  std::vector<std::string> Children(const std::string& id) const;
  // The memory files a restore of `record` reads, bottom layer first (the
  // record's own last): one file for a whole snapshot. FailedPrecondition
  // when a layer below is missing.
  absl::StatusOr<std::vector<std::string>> MemoryLayers(const SnapshotRecord& record) const;
  // Replaces the memory of snapshot `id` by `merged_memory` (a whole memory
  // file with the same content: compaction) and makes it whole (parent_id
  // cleared): the rename first, then the record (a crash in between leaves
  // a whole file under a record that still names its parent: still right).
  absl::Status ReplaceWithWholeMemory(const std::string& id, const std::string& merged_memory);

  const std::string& root() const { return root_; }
  std::string Dir(const std::string& id) const { return root_ + "/" + id; }
  static std::string VmstatePath(const std::string& dir) { return dir + "/vmstate"; }
  static std::string MemoryPath(const std::string& dir) { return dir + "/memory"; }
  static std::string DiskPath(const std::string& dir, const std::string& drive_id) {
    return dir + "/disks/" + drive_id;
  }
  static std::string PagerDir(const std::string& dir) { return dir + "/pager"; }

 private:
  explicit SnapshotStore(std::string root) : root_(std::move(root)) {}
  const SnapshotRecord* FindLocked(const std::string& ref) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string root_;
  mutable absl::Mutex mu_;
  std::map<std::string, SnapshotRecord> by_id_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> pending_names_ ABSL_GUARDED_BY(mu_);  // name -> id
};

// SHA-256 of a file's contents, lowercase hex.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// (De)serialization of records, exposed for tests.
std::string RecordToJson(const SnapshotRecord& record);
absl::StatusOr<SnapshotRecord> RecordFromJson(const std::string& json);

}  // namespace fcvm::storage
