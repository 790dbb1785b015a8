#include "lib/base/hugetlb.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm {
namespace {

constexpr char kNrHugepages[] = "/proc/sys/vm/nr_hugepages";
// Serialises read-modify-write of nr_hugepages between fcvm processes (tests
// running in parallel).
constexpr char kLockFile[] = "/tmp/fcvm-nr-hugepages.lock";

absl::StatusOr<uint64_t> ReadNr() {
  ASSIGN_OR_RETURN(std::string s, ReadFile(kNrHugepages));
  uint64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(s), &v)) {
    return absl::InternalError(absl::StrCat(kNrHugepages, ": unexpected contents '", s, "'"));
  }
  return v;
}

absl::Status WriteNr(uint64_t value) {
  UniqueFd fd(::open(kNrHugepages, O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", kNrHugepages));
  std::string s = absl::StrCat(value, "\n");
  if (::write(fd.get(), s.data(), s.size()) != static_cast<ssize_t>(s.size())) {
    return ErrnoError(absl::StrCat("write ", value, " to ", kNrHugepages));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> Lock() {
  UniqueFd fd(::open(kLockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError(absl::StrCat("open ", kLockFile));
  while (::flock(fd.get(), LOCK_EX) < 0) {
    if (errno != EINTR) return ErrnoError(absl::StrCat("flock ", kLockFile));
  }
  return fd;
}

}  // namespace

absl::StatusOr<HugePagePool> ReadHugePagePool() {
  ASSIGN_OR_RETURN(std::string meminfo, ReadFile("/proc/meminfo"));
  HugePagePool pool;
  bool seen = false;
  for (absl::string_view line : absl::StrSplit(meminfo, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(line, absl::MaxSplits(':', 1));
    absl::string_view value = absl::StripAsciiWhitespace(kv.second);
    absl::ConsumeSuffix(&value, " kB");
    uint64_t v = 0;
    if (!absl::SimpleAtoi(value, &v)) continue;
    if (kv.first == "HugePages_Total") {
      pool.total = v;
    } else if (kv.first == "HugePages_Free") {
      pool.free = v;
    } else if (kv.first == "HugePages_Rsvd") {
      pool.reserved = v;
    } else if (kv.first == "HugePages_Surp") {
      pool.surplus = v;
    } else if (kv.first == "Hugepagesize") {
      pool.page_size = v * 1024;
      seen = true;
    }
  }
  if (!seen || pool.page_size == 0)
    return absl::NotFoundError("/proc/meminfo: no hugetlb pool (Hugepagesize)");
  return pool;
}

absl::StatusOr<HugePagePool> ReadHugePagePoolOf(uint64_t page_size, const std::string& sysfs_dir) {
  std::string dir = absl::StrCat(sysfs_dir, "/hugepages-", page_size >> 10, "kB");
  if (::access(dir.c_str(), F_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no hugetlb pool of ", page_size >> 10, " KiB pages on this host"));
  }
  auto read = [&dir](const char* name) -> absl::StatusOr<uint64_t> {
    std::string path = absl::StrCat(dir, "/", name);
    ASSIGN_OR_RETURN(std::string s, ReadFile(path));
    uint64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(s), &v)) {
      return absl::InternalError(absl::StrCat(path, ": unexpected contents '", s, "'"));
    }
    return v;
  };
  HugePagePool pool;
  pool.page_size = page_size;
  ASSIGN_OR_RETURN(pool.total, read("nr_hugepages"));
  ASSIGN_OR_RETURN(pool.free, read("free_hugepages"));
  ASSIGN_OR_RETURN(pool.reserved, read("resv_hugepages"));
  ASSIGN_OR_RETURN(pool.surplus, read("surplus_hugepages"));
  ASSIGN_OR_RETURN(pool.overcommit, read("nr_overcommit_hugepages"));
  return pool;
}

absl::StatusOr<HugePageReservation> HugePageReservation::Add(uint64_t pages) {
  ASSIGN_OR_RETURN(HugePagePool pool, ReadHugePagePool());
  if (pages == 0) return HugePageReservation(0, pool.page_size);
  if (::access(kNrHugepages, W_OK) != 0) {
    return ErrnoError(absl::StrCat("reserve huge pages: ", kNrHugepages, " is not writable"));
  }
  ASSIGN_OR_RETURN(UniqueFd lock, Lock());
  ASSIGN_OR_RETURN(uint64_t before, ReadNr());
  RETURN_IF_ERROR(Annotate(WriteNr(before + pages), "reserve huge pages"));
  ASSIGN_OR_RETURN(uint64_t after, ReadNr());
  if (after < before + pages) {
    // The kernel found fewer free huge pages than asked: give those back.
    absl::Status undo = WriteNr(before);
    return absl::ResourceExhaustedError(
        absl::StrCat("reserve huge pages: asked the kernel for ", pages, " more ", pool.page_size >> 10,
                     " KiB pages (nr_hugepages ", before, " -> ", before + pages, "), it found only ",
                     after > before ? after - before : 0, " (memory short or fragmented)",
                     undo.ok() ? "" : absl::StrCat("; undo failed: ", undo.message())));
  }
  return HugePageReservation(pages, pool.page_size);
}

HugePageReservation::~HugePageReservation() { (void)Release(); }

HugePageReservation::HugePageReservation(HugePageReservation&& other) noexcept
    : pages_(std::exchange(other.pages_, 0)), page_size_(other.page_size_) {}

HugePageReservation& HugePageReservation::operator=(HugePageReservation&& other) noexcept {
  if (this != &other) {
    (void)Release();
    pages_ = std::exchange(other.pages_, 0);
    page_size_ = other.page_size_;
  }
  return *this;
}

absl::Status HugePageReservation::Release() {
  if (pages_ == 0) return absl::OkStatus();
  const uint64_t pages = std::exchange(pages_, 0);
  ASSIGN_OR_RETURN(UniqueFd lock, Lock());
  ASSIGN_OR_RETURN(uint64_t now, ReadNr());
  // Pages still in use stay allocated (as surplus) until freed; the kernel
  // shrinks the pool to the new size as they are.
  return Annotate(WriteNr(now > pages ? now - pages : 0), "release huge pages");
}

}  // namespace fcvm
