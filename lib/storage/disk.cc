#include "lib/storage/disk.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::storage {

const char* CopyMethodName(CopyMethod method) {
  return method == CopyMethod::kReflink ? "reflink" : "sparse-copy";
}

absl::StatusOr<CopyMethod> CopyDisk(const std::string& src, const std::string& dst, bool durable) {
  return CopyDisk(src, dst, CopyOptions{.durable = durable});
}

absl::StatusOr<CopyMethod> CopyDisk(const std::string& src, const std::string& dst,
                                    const CopyOptions& options) {
  RETURN_IF_ERROR(options.cancel.Check());
  UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError(absl::StrCat("open disk ", src));
  struct stat st;
  if (fstat(in.get(), &st) < 0) return ErrnoError(absl::StrCat("stat ", src));
  if (!S_ISREG(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat("disk ", src, " is not a regular file"));
  mode_t mode = options.mode >= 0 ? static_cast<mode_t>(options.mode) : (st.st_mode & 0777);
  UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!out) return ErrnoError(absl::StrCat("create ", dst));
  absl::Cleanup remove_dst = [&dst] { unlink(dst.c_str()); };

  CopyMethod method = CopyMethod::kReflink;
  if (ioctl(out.get(), FICLONE, in.get()) < 0) {
    if (errno != EOPNOTSUPP && errno != EXDEV && errno != EINVAL && errno != ENOTTY && errno != EPERM) {
      return ErrnoError(absl::StrCat("reflink ", src, " -> ", dst));
    }
    method = CopyMethod::kSparseCopy;
    if (ftruncate(out.get(), st.st_size) < 0) return ErrnoError(absl::StrCat("truncate ", dst));
    RETURN_IF_ERROR(CopyDataExtents(in.get(), out.get(), st.st_size, src, dst, options.cancel));
  }
  // O_CREAT's mode is filtered by the umask; the copy gets exactly the one asked for.
  if (options.mode >= 0 && fchmod(out.get(), mode) < 0) return ErrnoError(absl::StrCat("chmod ", dst));
  if (options.durable && fsync(out.get()) < 0) return ErrnoError(absl::StrCat("fsync ", dst));
  std::move(remove_dst).Cancel();
  return method;
}

absl::StatusOr<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs vfs;
  if (statvfs(path.c_str(), &vfs) < 0) return ErrnoError(absl::StrCat("statvfs ", path));
  return static_cast<uint64_t>(vfs.f_bavail) * static_cast<uint64_t>(vfs.f_frsize);
}

absl::StatusOr<uint64_t> AllocatedBytes(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("stat ", path));
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

absl::Status CheckFreeSpace(const std::string& dir, uint64_t need, absl::string_view what) {
  constexpr uint64_t kReserve = 16ull << 20;
  absl::StatusOr<uint64_t> free_bytes = FreeBytes(dir);
  if (!free_bytes.ok() || need + kReserve <= *free_bytes) return absl::OkStatus();
  auto mib = [](uint64_t b) { return absl::StrFormat("%.1f MiB", static_cast<double>(b) / (1 << 20)); };
  return absl::ResourceExhaustedError(absl::StrCat("not enough disk space for ", what, ": it needs ",
                                                   mib(need), " (+ ", mib(kReserve), " kept free) in ", dir,
                                                   ", which has ", mib(*free_bytes), " free"));
}

bool SupportsReflink(const std::string& dir) {
  std::string a = dir + "/.reflink-probe-a", b = dir + "/.reflink-probe-b";
  UniqueFd src(::open(a.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  UniqueFd dst(::open(b.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  bool ok = false;
  if (src && dst) {
    std::string block(4096, 'r');
    ok = ::write(src.get(), block.data(), block.size()) == static_cast<ssize_t>(block.size()) &&
         ioctl(dst.get(), FICLONE, src.get()) == 0;
  }
  ::unlink(a.c_str());
  ::unlink(b.c_str());
  return ok;
}

}  // namespace fcvm::storage
