// Live fork: N clones of a running VM as it is now, the source paused only
// while the pages it wrote since its memory base are written.
//
// Every VM with 4 KiB pages runs with Firecracker's dirty-page log on (boot
// and load), and its record names its memory base: the snapshot whose memory
// equals the VM's as of the log's last reset (the snapshot it was cloned
// from, its last snapshot, or its last fork). A fork takes a Diff snapshot
// (only the logged pages, into a sparse file the size of the memory) whose
// record names that base as its parent: a memory layer. The forks restore
// from it through the page server, which maps the layers into one view
// (lib/uffd/snapshot.h): nothing is merged while anyone waits. Without a
// usable base (a booted VM's first fork, or a base deleted since) the fork
// takes a full snapshot instead, and says so.
//
// Chains: a fork of a fork lies on its source's fork snapshot, so layers
// stack. Once a chain is kCompactLayers deep its top snapshot is merged into
// a whole memory file in the background (CompactSnapshot); a fork whose base
// is kMaxLayers deep merges the base first. A snapshot cannot be deleted
// while another lies on it (SnapshotStore::Delete).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/const_init.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "lib/vm/core.h"
#include "lib/vm/validate.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {
namespace {

// The snapshots being merged, process-wide.
class MergeClaim {
 public:
  static absl::StatusOr<MergeClaim> Take(const std::string& snapshot_id) {
    absl::MutexLock lock(&mu_);
    if (!merging_->insert(snapshot_id).second) {
      return absl::AbortedError(absl::StrCat("snapshot ", snapshot_id, " is being merged already"));
    }
    return MergeClaim(snapshot_id);
  }
  MergeClaim(MergeClaim&& other) noexcept : id_(std::move(other.id_)) { other.id_.clear(); }
  MergeClaim(const MergeClaim&) = delete;
  MergeClaim& operator=(const MergeClaim&) = delete;
  MergeClaim& operator=(MergeClaim&&) = delete;
  ~MergeClaim() {
    if (id_.empty()) return;
    absl::MutexLock lock(&mu_);
    merging_->erase(id_);
  }

 private:
  explicit MergeClaim(std::string id) : id_(std::move(id)) {}
  static absl::Mutex mu_;
  static absl::flat_hash_set<std::string>* merging_ ABSL_GUARDED_BY(mu_);
  std::string id_;
};
absl::Mutex MergeClaim::mu_(absl::kConstInit);
absl::flat_hash_set<std::string>* MergeClaim::merging_ = new absl::flat_hash_set<std::string>();

// Runs CompactSnapshot as an operation of its own (fcvmd's shutdown cancels
// it and waits for it), off the request's path.
void CompactInBackground(Core& core, const std::string& snapshot_id) {
  absl::StatusOr<Operations::Op> op = core.operations.Begin({});
  if (!op.ok()) return;
  auto held = std::make_shared<Operations::Op>(*std::move(op));
  Core* c = &core;
  core.leaf_executor->Submit([c, held, snapshot_id] {
    absl::Time start = absl::Now();
    absl::Status st = CompactSnapshot(*c, snapshot_id, held->token());
    if (st.ok()) {
      spdlog::info("snapshot {}: memory layers merged into one file in {}", snapshot_id,
                   absl::FormatDuration(absl::Now() - start));
    } else {
      spdlog::warn("snapshot {}: merging its memory layers: {}", snapshot_id, st);
    }
  });
}

}  // namespace

absl::Status CompactSnapshot(Core& core, const std::string& snapshot_id, const CancelToken& cancel) {
  // One merge of a snapshot at a time (the background one and a fork's, or
  // forks of several VMs on one base): another is refused, and its caller
  // goes on without it.
  ASSIGN_OR_RETURN(MergeClaim claim, MergeClaim::Take(snapshot_id));
  ASSIGN_OR_RETURN(storage::SnapshotRecord record, core.store->Get(snapshot_id));
  if (record.parent_id.empty()) return absl::OkStatus();  // merged meanwhile
  // Held: nobody deletes it (or, through it, its layers) meanwhile.
  ASSIGN_OR_RETURN(Registry::SnapshotUse use, core.registry.UseSnapshot(record.id));
  ASSIGN_OR_RETURN(std::vector<std::string> layers, core.store->MemoryLayers(record));
  RETURN_IF_ERROR(core.env.host->CheckFreeSpace(core.store->root(), record.memory_bytes,
                                                absl::StrCat("merging the memory layers of ", record.name)));
  const std::string dir = core.store->Dir(record.id);
  const std::string tmp = absl::StrCat(dir, "/memory.", NewId("merging"));
  UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
  if (!out) return ErrnoError(absl::StrCat("create ", tmp));
  absl::Cleanup remove = [&tmp] { (void)unlink(tmp.c_str()); };
  if (ftruncate(out.get(), static_cast<off_t>(record.memory_bytes)) < 0)
    return ErrnoError("size merged memory");
  for (const std::string& layer : layers) {
    UniqueFd in(::open(layer.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) return ErrnoError(absl::StrCat("open memory layer ", layer));
    // Each layer's data over the ones below it (its holes leave them).
    RETURN_IF_ERROR(
        CopyDataExtents(in.get(), out.get(), static_cast<off_t>(record.memory_bytes), layer, tmp, cancel));
  }
  if (fsync(out.get()) < 0) return ErrnoError(absl::StrCat("fsync ", tmp));
  // Same mode as the file it replaces (File clones of a jailed fcvmd need it
  // world-readable).
  struct stat st;
  if (stat(storage::SnapshotStore::MemoryPath(dir).c_str(), &st) == 0)
    (void)fchmod(out.get(), st.st_mode & 07777);
  RETURN_IF_ERROR(cancel.Check());
  RETURN_IF_ERROR(core.store->ReplaceWithWholeMemory(record.id, tmp));
  std::move(remove).Cancel();
  return absl::OkStatus();
}

absl::StatusOr<ForkResult> ForkVm(Core& core, const ForkRequest& req, const CancelToken& cancel) {
  RETURN_IF_ERROR(core.RequireVmms());
  absl::Time start = absl::Now();
  CloneRequest clone = req.clone;
  if (clone.backend != MemoryBackend::kUffd) {
    return absl::FailedPreconditionError(
        "forks restore from memory layers, which only the page server reads: use the UFFD backend (a File "
        "clone needs a whole memory file: take a snapshot and clone it)");
  }
  clone.snapshot_ref = "fork";  // checked below, once the snapshot exists
  RETURN_IF_ERROR(ValidateCloneRequest(clone));
  RETURN_IF_ERROR(ValidateMetadata(clone.metadata_json));
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core.registry.Find(req.vm_ref));
  VmInfo info = core.registry.Info(*e);
  if (info.config.huge_pages == HugePages::k2M) {
    return absl::FailedPreconditionError(absl::StrCat(
        "vm ", info.name,
        " has 2 MiB pages: forking it live needs its dirty pages logged, which KVM does in 4 KiB "
        "pages; snapshot it and clone the snapshot instead"));
  }
  SnapshotTake take;
  take.id = NewId("snap");
  take.name =
      req.snapshot_name.empty() ? absl::StrCat(info.name, "-fork-", take.id.substr(5)) : req.snapshot_name;
  if (take.name.size() > 64) take.name = take.id;  // names are at most 64 bytes
  RETURN_IF_ERROR(ValidateName("fork snapshot name", take.name));
  take.labels = {{"fcvm-fork-of", info.id}};

  ForkResult out;
  // The base is held from here until the forks run: deleting it is refused
  // meanwhile (the new layer lies on it before its record says so).
  std::optional<Registry::SnapshotUse> base_use;
  {
    absl::MutexLock op(&e->op);
    info = core.registry.Info(*e);
    std::string base = info.memory_base;
    if (!base.empty()) {
      if (absl::StatusOr<Registry::SnapshotUse> use = core.registry.UseSnapshot(base); use.ok()) {
        base_use.emplace(*std::move(use));
      } else {
        spdlog::info("fork of vm {}: its memory base {} is being deleted; writing its whole memory", info.id,
                     base);
        base.clear();
      }
    }
    if (!base.empty()) {
      absl::StatusOr<storage::SnapshotRecord> rec = core.store->Get(base);
      absl::StatusOr<std::vector<std::string>> layers =
          rec.ok() ? core.store->MemoryLayers(*rec) : absl::StatusOr<std::vector<std::string>>(rec.status());
      if (!layers.ok()) {
        spdlog::info("fork of vm {}: its memory base {} is unusable ({}); writing its whole memory", info.id,
                     base, layers.status());
        base.clear();
      } else if (layers->size() >= kMaxLayers) {
        // The chain is as deep as it may get: merge its top first.
        if (absl::Status st = CompactSnapshot(core, base, cancel); !st.ok()) {
          spdlog::warn("fork of vm {}: merging the layers of {}: {}; writing its whole memory", info.id, base,
                       st);
          base.clear();
        }
      }
    }
    take.parent_id = base;
    ASSIGN_OR_RETURN(TakenSnapshot taken, TakeSnapshot(core, *e, take, cancel));
    out.kind = base.empty() ? "full" : "diff";
    out.source_pause = taken.pause;
    out.written_bytes = taken.record.memory_allocated_bytes;
    out.snapshot = DescribeSnapshot(core, taken.record);
    spdlog::info("fork of vm {}: {} snapshot {} ({} layer(s)), {} KiB written, source paused {}", info.id,
                 out.kind, taken.record.id, out.snapshot.memory_layers, out.written_bytes >> 10,
                 absl::FormatDuration(taken.pause));
  }
  Event ev;
  ev.kind = EventKind::kSnapshotCreated;
  ev.snapshot_id = out.snapshot.id;
  ev.vm_id = info.id;
  ev.message =
      absl::StrCat("snapshot ", out.snapshot.name, " created (", out.kind, ", fork of ", info.name, ")");
  core.Publish(std::move(ev));
  if (out.snapshot.memory_layers > kCompactLayers) CompactInBackground(core, out.snapshot.id);

  clone.snapshot_ref = out.snapshot.id;
  if (clone.name_prefix.empty()) {
    clone.name_prefix = absl::StrCat(info.name, "-fork");
    if (clone.name_prefix.size() > kMaxClonePrefixBytes) clone.name_prefix = "fork";
  }
  absl::StatusOr<CloneResult> forks = CloneVms(core, clone, cancel);
  if (!forks.ok()) {
    // Nothing was forked: the snapshot goes too (the source's memory base
    // with it: its next fork writes its whole memory).
    if (absl::StatusOr<DeleteSnapshotResult> d = DeleteSnapshot(core, out.snapshot.id, /*force=*/true);
        !d.ok())
      spdlog::warn("fork of vm {}: removing snapshot {}: {}", info.id, out.snapshot.id, d.status());
    return forks.status();
  }
  out.forks = *std::move(forks);
  out.snapshot.clone_count = core.registry.LiveCloneCount(out.snapshot.id);
  out.total = absl::Now() - start;
  return out;
}

}  // namespace fcvm::vm
