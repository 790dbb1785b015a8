#pragma once

// A snapshot memory file as the page server sees it.
//
// SnapshotMemory is one read-only MAP_SHARED mapping of the memory file, the
// file's zero-page map and its recorded working set. It is shared (through
// std::shared_ptr) by every listener and session serving that snapshot, so a
// file is mapped once however many clones use it; the mapping goes away with
// the last reference. SnapshotRegistry hands out those references, keyed by
// the file's (device, inode).
//
// Unit: everything kept here (zero map, working set, prefetch plan) is in
// pages of the host's base page size (4 KiB on x86_64), whatever the page
// size of the guests served from the file: a session serving a guest backed
// by 2 MiB hugetlbfs pages reads a 2 MiB page as 512 consecutive units (it is
// zero when all 512 are). A snapshot's memory is always restored with the
// page size it was made with, but nothing here depends on that: one view of
// a file serves any page size, and the unit is written into every side file.
//
// Zero map: one bit per page, set when the page is all zero. Computed once and
// kept beside the snapshot (default "<mem file>.zeromap"); a file whose
// header does not match the memory file (size, inode, mtime, page size) is
// stale and recomputed. Failing to write it is not an error (logged).
//
// Working set: the file pages a recording clone faulted on, in first-touch
// order, and the block each fault stands for: the recorder's fault-around
// block, or its page (512 units for a 2 MiB page) when that is larger
// (default "<mem file>.wset"), loaded when present and valid.
//
// Thread-safety: data(), IsZero() and the sizes are immutable after Open and
// safe from any thread; the working-set accessors lock a mutex (control
// path only, never per fault).

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace fcvm::uffd {

struct SnapshotFiles {
  // The memory file; with lower_layers, the top layer of a layered memory.
  std::string mem_file_path;
  // Layered memory (a live fork's Diff snapshots), bottom first: a whole
  // memory file, then sparse files of the same size holding only the pages
  // written since the layer under them (a hole: read the layer below).
  // mem_file_path lies on the last. Served through one composite mapping:
  // nothing is merged.
  std::vector<std::string> lower_layers;
  std::string zero_map_path;     // empty: "<mem_file_path>.zeromap"
  std::string working_set_path;  // empty: "<mem_file_path>.wset"
};

// Identity of the memory file, written into the side files.
struct FileIdentity {
  uint64_t size = 0;
  uint64_t inode = 0;
  uint64_t mtime_ns = 0;
  uint64_t page_size = 0;
};

// Side-file codecs (pure; exposed for tests). Decode returns
// InvalidArgument/FailedPrecondition for a corrupt or stale file.
std::string EncodeZeroMap(const FileIdentity& id, const std::vector<uint64_t>& bits);
absl::StatusOr<std::vector<uint64_t>> DecodeZeroMap(absl::string_view data, const FileIdentity& id);
// A working set also records the fault-around block (in pages) the recording
// clone ran with: its faults stand for whole blocks.
std::string EncodeWorkingSet(const FileIdentity& id, const std::vector<uint64_t>& pages,
                             uint64_t block_pages = 1);
absl::StatusOr<std::vector<uint64_t>> DecodeWorkingSet(absl::string_view data, const FileIdentity& id,
                                                       uint64_t* block_pages = nullptr);
// The page count a working-set file says it holds (its header only: whether
// it is still valid for the memory file is checked when it is loaded). 0 when
// the file does not exist; InvalidArgument when it is not a working set.
absl::StatusOr<uint64_t> WorkingSetFilePages(const std::string& path);

class SnapshotMemory {
 public:
  // Opens and maps `files.mem_file_path`, loads or computes the zero map and
  // loads the working set if present. Errors: the errno status of open/mmap
  // ("open /x: No such file or directory"); InvalidArgument for an empty file
  // or one whose size is not a multiple of the page size.
  //
  // Layered (files.lower_layers): the bottom layer is mapped whole, and each
  // data extent of every layer above it (SEEK_DATA/SEEK_HOLE) is mapped over
  // it in order, so data() reads each page from the topmost layer that holds
  // it. InvalidArgument when the layers' sizes differ; ResourceExhausted past
  // kMaxLayerExtents extents (compact the layers).
  static absl::StatusOr<std::shared_ptr<SnapshotMemory>> Open(const SnapshotFiles& files);
  ~SnapshotMemory();
  SnapshotMemory(const SnapshotMemory&) = delete;
  SnapshotMemory& operator=(const SnapshotMemory&) = delete;

  static constexpr uint64_t kMaxLayerExtents = 16384;

  const std::string& path() const { return files_.mem_file_path; }
  // Layers served (1: a whole memory file) and the extents mapped from the
  // layers above the bottom one.
  uint32_t layers() const { return static_cast<uint32_t>(files_.lower_layers.size() + 1); }
  uint64_t layer_extents() const { return layer_extents_; }
  const SnapshotFiles& files() const { return files_; }
  const FileIdentity& identity() const { return id_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return id_.size; }
  // The unit (host base page size) of the zero map, working set and plan.
  uint64_t page_size() const { return id_.page_size; }
  uint64_t num_pages() const { return id_.size / id_.page_size; }
  bool IsZero(uint64_t page) const { return (zero_bits_[page >> 6] >> (page & 63)) & 1; }
  // True when the `count` units from `first` are all zero (a 2 MiB page: 512
  // units, 8 words of the map). The range must lie inside the file.
  bool IsZeroRange(uint64_t first, uint64_t count) const;
  uint64_t zero_pages() const { return zero_count_; }
  // True when the zero map was read from its file rather than computed.
  bool zero_map_loaded() const { return zero_map_loaded_; }

  // The recorded working set (file page indices, first-touch order); empty
  // when none was recorded.
  std::shared_ptr<const std::vector<uint64_t>> working_set() const;
  // What each recorded fault stands for, in units (1 = that page alone).
  uint64_t working_set_block_pages() const;
  // Claims the one recording slot of this snapshot (policy auto). False when
  // another session already records.
  bool TryClaimRecording();
  void ReleaseRecording();
  // Installs a freshly recorded working set (the caller writes the file).
  void SetWorkingSet(std::vector<uint64_t> pages, uint64_t block_pages = 1);

  // What a prefetching clone installs: the working set's fault-around blocks
  // (each recorded fault stands for the block the recorder installed around
  // it), sorted and merged into runs of file pages. Computed once per
  // working set and shared by every clone; null when there is no working set.
  struct Run {
    uint64_t begin = 0, count = 0;  // file pages
  };
  std::shared_ptr<const std::vector<Run>> prefetch_plan() const;
  // Maps the plan's pages into this process's page tables (reading them from
  // disk if needed), once per working set, so that the clones' copies do not
  // take a page fault on the source. Blocking: call it from a control thread,
  // never from a loop thread.
  void PopulatePrefetchSource();

 private:
  SnapshotMemory() = default;
  absl::Status LoadOrComputeZeroMap();
  absl::Status MapLayers(int top_fd);

  SnapshotFiles files_;
  FileIdentity id_;
  uint8_t* data_ = nullptr;
  uint64_t layer_extents_ = 0;
  std::vector<uint64_t> zero_bits_;
  uint64_t zero_count_ = 0;
  bool zero_map_loaded_ = false;
  std::atomic<bool> recording_{false};
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<uint64_t>> working_set_ ABSL_GUARDED_BY(mu_);
  uint64_t working_set_block_pages_ ABSL_GUARDED_BY(mu_) = 1;
  mutable std::shared_ptr<const std::vector<Run>> plan_ ABSL_GUARDED_BY(mu_);  // cache of prefetch_plan()
  std::shared_ptr<const std::vector<Run>> populated_ ABSL_GUARDED_BY(mu_);     // plan last populated
};

// Thread-safe map (device, inode) -> live SnapshotMemory. Holds weak
// references only: a snapshot no clone uses is unmapped.
class SnapshotRegistry {
 public:
  absl::StatusOr<std::shared_ptr<SnapshotMemory>> Get(const SnapshotFiles& files);
  // Snapshots alive right now (for stats).
  std::vector<std::shared_ptr<SnapshotMemory>> Live();

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, std::weak_ptr<SnapshotMemory>> map_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::uffd
