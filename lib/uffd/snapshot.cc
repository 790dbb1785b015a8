#include "lib/uffd/snapshot.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "spdlog/spdlog.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older C library headers lack it
#endif

namespace fcvm::uffd {
namespace {

constexpr char kZeroMagic[8] = {'F', 'C', 'V', 'M', 'Z', 'M', 'P', '1'};
constexpr char kWsetMagic[8] = {'F', 'C', 'V', 'M', 'W', 'S', 'T', '2'};
constexpr size_t kHeaderSize = 8 + 4 * 8;

void PutU64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
uint64_t GetU64(absl::string_view data, size_t at) {
  uint64_t v;
  std::memcpy(&v, data.data() + at, 8);
  return v;
}

std::string Header(const char* magic, const FileIdentity& id) {
  std::string out(magic, 8);
  PutU64(out, id.size);
  PutU64(out, id.inode);
  PutU64(out, id.mtime_ns);
  PutU64(out, id.page_size);
  return out;
}

absl::Status CheckHeader(absl::string_view data, const char* magic, const FileIdentity& id) {
  if (data.size() < kHeaderSize || std::memcmp(data.data(), magic, 8) != 0) {
    return absl::InvalidArgumentError("bad magic or short header");
  }
  if (GetU64(data, 8) != id.size || GetU64(data, 16) != id.inode || GetU64(data, 24) != id.mtime_ns ||
      GetU64(data, 32) != id.page_size) {
    return absl::FailedPreconditionError("stale: written for another version of the memory file");
  }
  return absl::OkStatus();
}

bool PageIsZero(const uint8_t* p, size_t len) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < len / 8; i += 4) {
    if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) != 0) return false;
  }
  return true;
}

}  // namespace

std::string EncodeZeroMap(const FileIdentity& id, const std::vector<uint64_t>& bits) {
  std::string out = Header(kZeroMagic, id);
  out.append(reinterpret_cast<const char*>(bits.data()), bits.size() * 8);
  return out;
}

absl::StatusOr<std::vector<uint64_t>> DecodeZeroMap(absl::string_view data, const FileIdentity& id) {
  RETURN_IF_ERROR(CheckHeader(data, kZeroMagic, id));
  uint64_t pages = id.size / id.page_size;
  size_t words = (pages + 63) / 64;
  if (data.size() != kHeaderSize + words * 8) return absl::InvalidArgumentError("wrong bitmap length");
  std::vector<uint64_t> bits(words);
  std::memcpy(bits.data(), data.data() + kHeaderSize, words * 8);
  return bits;
}

std::string EncodeWorkingSet(const FileIdentity& id, const std::vector<uint64_t>& pages,
                             uint64_t block_pages) {
  std::string out = Header(kWsetMagic, id);
  PutU64(out, pages.size());
  PutU64(out, block_pages);
  out.append(reinterpret_cast<const char*>(pages.data()), pages.size() * 8);
  return out;
}

absl::StatusOr<uint64_t> WorkingSetFilePages(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return 0;
    return ErrnoError(absl::StrCat("open ", path));
  }
  char head[kHeaderSize + 8];
  ssize_t n = ::pread(fd.get(), head, sizeof(head), 0);
  if (n < 0) return ErrnoError(absl::StrCat("read ", path));
  if (static_cast<size_t>(n) < sizeof(head) || std::memcmp(head, kWsetMagic, 8) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a working-set file"));
  }
  return GetU64(absl::string_view(head, sizeof(head)), kHeaderSize);
}

absl::StatusOr<std::vector<uint64_t>> DecodeWorkingSet(absl::string_view data, const FileIdentity& id,
                                                       uint64_t* block_pages) {
  RETURN_IF_ERROR(CheckHeader(data, kWsetMagic, id));
  if (data.size() < kHeaderSize + 16) return absl::InvalidArgumentError("short working set");
  uint64_t count = GetU64(data, kHeaderSize);
  uint64_t block = GetU64(data, kHeaderSize + 8);
  if (block == 0 || block > (1u << 20) || (block & (block - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad block size ", block));
  }
  if (count > (data.size() - kHeaderSize - 16) / 8 || data.size() != kHeaderSize + 16 + count * 8) {
    return absl::InvalidArgumentError("wrong working set length");
  }
  std::vector<uint64_t> pages(count);
  std::memcpy(pages.data(), data.data() + kHeaderSize + 16, count * 8);
  if (block_pages != nullptr) *block_pages = block;
  uint64_t num_pages = id.size / id.page_size;
  for (uint64_t p : pages) {
    if (p >= num_pages) return absl::InvalidArgumentError(absl::StrCat("page ", p, " past the end"));
  }
  return pages;
}

absl::StatusOr<std::shared_ptr<SnapshotMemory>> SnapshotMemory::Open(const SnapshotFiles& files) {
  std::shared_ptr<SnapshotMemory> snap(new SnapshotMemory());
  snap->files_ = files;
  if (snap->files_.zero_map_path.empty()) snap->files_.zero_map_path = files.mem_file_path + ".zeromap";
  if (snap->files_.working_set_path.empty()) snap->files_.working_set_path = files.mem_file_path + ".wset";
  const std::string& path = files.mem_file_path;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return ErrnoError(absl::StrCat("fstat ", path));
  FileIdentity& id = snap->id_;
  id.size = static_cast<uint64_t>(st.st_size);
  id.inode = st.st_ino;
  id.mtime_ns = static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + st.st_mtim.tv_nsec;
  id.page_size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (id.size == 0 || id.size % id.page_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("memory file ", path, ": size ", id.size,
                                                   " is not a non-zero multiple of ", id.page_size));
  }
  if (files.lower_layers.empty()) {
    void* map = ::mmap(nullptr, id.size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (map == MAP_FAILED) return ErrnoError(absl::StrCat("mmap ", path));
    snap->data_ = static_cast<uint8_t*>(map);
  } else {
    RETURN_IF_ERROR(snap->MapLayers(fd.get()));
  }
  RETURN_IF_ERROR(snap->LoadOrComputeZeroMap());
  auto ws = ReadFile(snap->files_.working_set_path);
  if (ws.ok()) {
    uint64_t block = 1;
    auto pages = DecodeWorkingSet(*ws, id, &block);
    if (pages.ok()) {
      absl::MutexLock lock(&snap->mu_);
      snap->working_set_ = std::make_shared<const std::vector<uint64_t>>(std::move(*pages));
      snap->working_set_block_pages_ = block;
    } else {
      spdlog::warn("ignoring working set {}: {}", snap->files_.working_set_path, pages.status().ToString());
    }
  }
  return snap;
}

absl::Status SnapshotMemory::MapLayers(int top_fd) {
  const uint64_t size = id_.size;
  const uint64_t page = id_.page_size;
  std::vector<UniqueFd> fds;
  std::vector<std::string> paths = files_.lower_layers;
  for (const std::string& p : files_.lower_layers) {
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return ErrnoError(absl::StrCat("open memory layer ", p));
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError(absl::StrCat("fstat ", p));
    if (static_cast<uint64_t>(st.st_size) != size) {
      return absl::InvalidArgumentError(absl::StrCat("memory layer ", p, " has ", st.st_size,
                                                     " bytes, the top layer ", files_.mem_file_path, " ",
                                                     size));
    }
    fds.push_back(std::move(fd));
  }
  // The bottom layer whole; data_ owns the range from here on (the
  // destructor unmaps it, with every extent mapped over it).
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fds[0].get(), 0);
  if (map == MAP_FAILED) return ErrnoError(absl::StrCat("mmap ", paths[0]));
  data_ = static_cast<uint8_t*>(map);
  paths.push_back(files_.mem_file_path);
  for (size_t i = 1; i < paths.size(); ++i) {
    const int fd = i < fds.size() ? fds[i].get() : top_fd;
    off_t pos = 0;
    while (static_cast<uint64_t>(pos) < size) {
      off_t begin = ::lseek(fd, pos, SEEK_DATA);
      if (begin < 0) {
        if (errno == ENXIO) break;  // no data after pos
        return ErrnoError(absl::StrCat("seek data in memory layer ", paths[i]));
      }
      off_t end = ::lseek(fd, begin, SEEK_HOLE);
      if (end < 0) return ErrnoError(absl::StrCat("seek hole in memory layer ", paths[i]));
      // Whole pages (a file system block is never larger than a page here).
      uint64_t first = static_cast<uint64_t>(begin) / page * page;
      uint64_t last = std::min(size, (static_cast<uint64_t>(end) + page - 1) / page * page);
      if (last > first) {
        if (++layer_extents_ > kMaxLayerExtents) {
          return absl::ResourceExhaustedError(absl::StrCat("memory layers of ", files_.mem_file_path,
                                                           " have more than ", kMaxLayerExtents,
                                                           " extents; compact them"));
        }
        void* at = ::mmap(data_ + first, last - first, PROT_READ, MAP_SHARED | MAP_FIXED, fd,
                          static_cast<off_t>(first));
        if (at == MAP_FAILED) return ErrnoError(absl::StrCat("mmap memory layer ", paths[i]));
      }
      pos = static_cast<off_t>(last > static_cast<uint64_t>(end) ? last : static_cast<uint64_t>(end));
    }
  }
  return absl::OkStatus();
}

SnapshotMemory::~SnapshotMemory() {
  if (data_ != nullptr) ::munmap(data_, id_.size);
}

absl::Status SnapshotMemory::LoadOrComputeZeroMap() {
  const uint64_t pages = num_pages();
  auto existing = ReadFile(files_.zero_map_path);
  if (existing.ok()) {
    auto bits = DecodeZeroMap(*existing, id_);
    if (bits.ok()) {
      zero_bits_ = std::move(*bits);
      zero_map_loaded_ = true;
    } else {
      spdlog::info("recomputing zero map {}: {}", files_.zero_map_path, bits.status().ToString());
    }
  }
  if (!zero_map_loaded_) {
    zero_bits_.assign((pages + 63) / 64, 0);
    for (uint64_t p = 0; p < pages; ++p) {
      if (PageIsZero(data_ + p * id_.page_size, id_.page_size)) zero_bits_[p >> 6] |= 1ull << (p & 63);
    }
    absl::Status st = WriteFileAtomic(files_.zero_map_path, EncodeZeroMap(id_, zero_bits_));
    if (!st.ok()) spdlog::warn("cannot keep the zero map beside the snapshot: {}", st.ToString());
  }
  zero_count_ = 0;
  for (uint64_t w : zero_bits_) zero_count_ += static_cast<uint64_t>(__builtin_popcountll(w));
  return absl::OkStatus();
}

bool SnapshotMemory::IsZeroRange(uint64_t first, uint64_t count) const {
  uint64_t p = first;
  const uint64_t end = first + count;
  while (p < end && (p & 63) != 0) {
    if (!IsZero(p++)) return false;
  }
  for (; p + 64 <= end; p += 64) {
    if (zero_bits_[p >> 6] != ~0ull) return false;
  }
  for (; p < end; ++p) {
    if (!IsZero(p)) return false;
  }
  return true;
}

std::shared_ptr<const std::vector<uint64_t>> SnapshotMemory::working_set() const {
  absl::MutexLock lock(&mu_);
  return working_set_;
}

bool SnapshotMemory::TryClaimRecording() {
  bool expected = false;
  return recording_.compare_exchange_strong(expected, true);
}

void SnapshotMemory::ReleaseRecording() { recording_.store(false); }

void SnapshotMemory::SetWorkingSet(std::vector<uint64_t> pages, uint64_t block_pages) {
  auto ws = std::make_shared<const std::vector<uint64_t>>(std::move(pages));
  absl::MutexLock lock(&mu_);
  working_set_ = std::move(ws);
  working_set_block_pages_ = block_pages;
  plan_.reset();
}

std::shared_ptr<const std::vector<SnapshotMemory::Run>> SnapshotMemory::prefetch_plan() const {
  absl::MutexLock lock(&mu_);
  if (plan_ || !working_set_ || working_set_->empty()) return plan_;
  const uint64_t bp = std::max<uint64_t>(1, working_set_block_pages_);
  std::vector<uint64_t> blocks;
  blocks.reserve(working_set_->size());
  for (uint64_t p : *working_set_) blocks.push_back(p / bp);
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  auto plan = std::make_shared<std::vector<Run>>();
  const uint64_t pages = num_pages();
  for (uint64_t b : blocks) {
    uint64_t first = b * bp;
    if (first >= pages) continue;
    uint64_t count = std::min(bp, pages - first);
    if (!plan->empty() && plan->back().begin + plan->back().count == first) {
      plan->back().count += count;
    } else {
      plan->push_back({first, count});
    }
  }
  plan_ = std::move(plan);
  return plan_;
}

void SnapshotMemory::PopulatePrefetchSource() {
  std::shared_ptr<const std::vector<Run>> plan = prefetch_plan();
  {
    absl::MutexLock lock(&mu_);
    if (!plan || populated_ == plan) return;
    populated_ = plan;
  }
  const uint64_t ps = page_size();
  // The data stretches of the plan (zero pages are never copied from the file).
  std::vector<Run> data;
  for (const Run& run : *plan) {
    uint64_t p = run.begin, end = run.begin + run.count;
    while (p < end) {
      while (p < end && IsZero(p)) ++p;
      uint64_t q = p;
      while (q < end && !IsZero(q)) ++q;
      if (q > p) data.push_back({p, q - p});
      p = q;
    }
  }
  // Start every read at once (a cold file is read with all its I/O in
  // flight), then map the pages, waiting for them.
  for (const Run& r : data) ::madvise(data_ + r.begin * ps, r.count * ps, MADV_WILLNEED);
  for (const Run& r : data) {
    // Older kernels (< 5.14) lack MADV_POPULATE_READ: the reads are started at least.
    (void)::madvise(data_ + r.begin * ps, r.count * ps, MADV_POPULATE_READ);
  }
}

uint64_t SnapshotMemory::working_set_block_pages() const {
  absl::MutexLock lock(&mu_);
  return working_set_block_pages_;
}

absl::StatusOr<std::shared_ptr<SnapshotMemory>> SnapshotRegistry::Get(const SnapshotFiles& files) {
  struct stat st;
  if (::stat(files.mem_file_path.c_str(), &st) < 0)
    return ErrnoError(absl::StrCat("stat ", files.mem_file_path));
  std::pair<uint64_t, uint64_t> key{st.st_dev, st.st_ino};
  absl::MutexLock lock(&mu_);
  auto it = map_.find(key);
  if (it != map_.end()) {
    if (auto live = it->second.lock()) return live;
  }
  // Opening under the lock keeps two first clones from computing the zero map
  // twice; it happens once per snapshot.
  ASSIGN_OR_RETURN(auto snap, SnapshotMemory::Open(files));
  map_[key] = snap;
  return snap;
}

std::vector<std::shared_ptr<SnapshotMemory>> SnapshotRegistry::Live() {
  std::vector<std::shared_ptr<SnapshotMemory>> out;
  absl::MutexLock lock(&mu_);
  for (auto it = map_.begin(); it != map_.end();) {
    if (auto s = it->second.lock()) {
      out.push_back(std::move(s));
      ++it;
    } else {
      map_.erase(it++);
    }
  }
  return out;
}

}  // namespace fcvm::uffd
