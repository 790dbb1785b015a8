#include "lib/storage/disk.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::storage {

const char* CopyMethodName(CopyMethod method) {
  return method == CopyMethod::kReflink ? "reflink" : "sparse-copy";
}

namespace {

absl::Status SparseCopy(int in, int out, off_t size, const std::string& src, const std::string& dst) {
  off_t pos = 0;
  while (pos < size) {
    off_t data = lseek(in, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      return ErrnoError(absl::StrCat("seek data in ", src));
    }
    off_t hole = lseek(in, data, SEEK_HOLE);
    if (hole < 0) return ErrnoError(absl::StrCat("seek hole in ", src));
    off_t in_off = data;
    off_t out_off = data;
    while (in_off < hole) {
      ssize_t n = copy_file_range(in, &in_off, out, &out_off, static_cast<size_t>(hole - in_off), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(absl::StrCat("copy ", src, " -> ", dst));
      }
      if (n == 0) break;
    }
    pos = hole;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CopyMethod> CopyDisk(const std::string& src, const std::string& dst, bool durable) {
  UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError(absl::StrCat("open disk ", src));
  struct stat st;
  if (fstat(in.get(), &st) < 0) return ErrnoError(absl::StrCat("stat ", src));
  if (!S_ISREG(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat("disk ", src, " is not a regular file"));
  UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0777));
  if (!out) return ErrnoError(absl::StrCat("create ", dst));
  absl::Cleanup remove_dst = [&dst] { unlink(dst.c_str()); };

  CopyMethod method = CopyMethod::kReflink;
  if (ioctl(out.get(), FICLONE, in.get()) < 0) {
    if (errno != EOPNOTSUPP && errno != EXDEV && errno != EINVAL && errno != ENOTTY && errno != EPERM) {
      return ErrnoError(absl::StrCat("reflink ", src, " -> ", dst));
    }
    method = CopyMethod::kSparseCopy;
    if (ftruncate(out.get(), st.st_size) < 0) return ErrnoError(absl::StrCat("truncate ", dst));
    RETURN_IF_ERROR(SparseCopy(in.get(), out.get(), st.st_size, src, dst));
  }
  if (durable && fsync(out.get()) < 0) return ErrnoError(absl::StrCat("fsync ", dst));
  std::move(remove_dst).Cancel();
  return method;
}

}  // namespace fcvm::storage
