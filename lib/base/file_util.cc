#include "lib/base/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat("read ", path));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents, int mode, bool durable) {
  std::string dir = ".";
  size_t slash = path.rfind('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return ErrnoError(absl::StrCat("open ", tmp));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd.get(), contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      unlink(tmp.c_str());
      return ErrnoError(err, absl::StrCat("write ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  if (durable && fsync(fd.get()) < 0) {
    int err = errno;
    unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("fsync ", tmp));
  }
  fd.Reset();
  if (rename(tmp.c_str(), path.c_str()) < 0) {
    int err = errno;
    unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("rename ", tmp, " -> ", path));
  }
  if (durable) {
    UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd) fsync(dfd.get());
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path, int mode) {
  if (path.empty()) return absl::InvalidArgumentError("mkdir: empty path");
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  // The common case first: only the last component is missing. Every mkdir
  // takes its parent's lock, so not trying the existing ancestors again
  // matters when many VMs are created at once.
  if (mkdir(p.c_str(), mode) < 0) {
    if (errno == ENOENT) {
      size_t slash = p.rfind('/');
      if (slash == std::string::npos || slash == 0) return ErrnoError(absl::StrCat("mkdir ", p));
      RETURN_IF_ERROR(MakeDirs(p.substr(0, slash), mode));
      if (mkdir(p.c_str(), mode) < 0 && errno != EEXIST) return ErrnoError(absl::StrCat("mkdir ", p));
    } else if (errno != EEXIST) {
      return ErrnoError(absl::StrCat("mkdir ", p));
    } else {
      struct stat st;
      if (stat(p.c_str(), &st) < 0) return ErrnoError(absl::StrCat("stat ", p));
      if (!S_ISDIR(st.st_mode)) return absl::FailedPreconditionError(absl::StrCat(p, " is not a directory"));
    }
  }
  return absl::OkStatus();
}

namespace {

// Empties the directory open at `dir_fd` (which it takes over).
absl::Status RemoveContents(int dir_fd, const std::string& path, dev_t dev) {
  DIR* dir = fdopendir(dir_fd);
  if (dir == nullptr) {
    ::close(dir_fd);
    return ErrnoError(absl::StrCat("opendir ", path));
  }
  absl::Status result;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string child = absl::StrCat(path, "/", name);
    struct stat st;
    if (fstatat(dirfd(dir), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) continue;
      result = ErrnoError(absl::StrCat("stat ", child));
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      if (st.st_dev != dev) {
        result = absl::FailedPreconditionError(absl::StrCat("refusing to remove mount point ", child));
        break;
      }
      int sub = openat(dirfd(dir), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        result = ErrnoError(absl::StrCat("open ", child));
        break;
      }
      result = RemoveContents(sub, child, dev);
      if (!result.ok()) break;
      if (unlinkat(dirfd(dir), name.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT) {
        result = ErrnoError(absl::StrCat("rmdir ", child));
        break;
      }
    } else if (unlinkat(dirfd(dir), name.c_str(), 0) < 0 && errno != ENOENT) {
      result = ErrnoError(absl::StrCat("unlink ", child));
      break;
    }
  }
  closedir(dir);
  return result;
}

}  // namespace

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(absl::StrCat("stat ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("unlink ", path));
    return absl::OkStatus();
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat("open ", path));
  RETURN_IF_ERROR(RemoveContents(fd, path, st.st_dev));
  if (rmdir(path.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("rmdir ", path));
  return absl::OkStatus();
}

// Chunk of one copy step: the copy checks for cancellation between chunks.
constexpr size_t kCopyChunk = 16 << 20;

absl::Status CopyDataExtents(int in, int out, off_t size, const std::string& src, const std::string& dst,
                             const CancelToken& cancel) {
  bool use_cfr = true;  // copy_file_range until it says it cannot
  std::vector<char> buf;
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
      if (absl::Status st = cancel.Check(); !st.ok()) {
        return Annotate(st, absl::StrCat("copy ", src, " -> ", dst));
      }
      if (use_cfr) {
        size_t want = static_cast<size_t>(std::min<off_t>(hole - in_off, static_cast<off_t>(kCopyChunk)));
        ssize_t n = copy_file_range(in, &in_off, out, &out_off, want, 0);
        if (n > 0) continue;
        if (n == 0) break;
        if (errno == EINTR) continue;
        // Across file systems (EXDEV since Linux 5.19) or where the file
        // system cannot: copy through a buffer from here on.
        if (errno != EXDEV && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
          return ErrnoError(absl::StrCat("copy ", src, " -> ", dst));
        }
        use_cfr = false;
        buf.resize(1 << 20);
      }
      size_t want = static_cast<size_t>(std::min<off_t>(hole - in_off, static_cast<off_t>(buf.size())));
      ssize_t r = pread(in, buf.data(), want, in_off);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ErrnoError(absl::StrCat("read ", src));
      if (r == 0) break;
      for (ssize_t w = 0; w < r;) {
        ssize_t k = pwrite(out, buf.data() + w, static_cast<size_t>(r - w), out_off + w);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return ErrnoError(absl::StrCat("write ", dst));
        w += k;
      }
      in_off += r;
      out_off += r;
    }
    pos = hole;
  }
  return absl::OkStatus();
}

}  // namespace fcvm
