#include "lib/firecracker/jail.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {
namespace {

bool ValidJailId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-'; });
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Whether uid:gid (no supplementary groups: the jailer drops them) passes the
// mode bits of `st` for `want` (4 read, 2 write). ACLs are not looked at.
bool Allowed(const struct stat& st, uint32_t uid, uint32_t gid, mode_t want) {
  if (st.st_uid == uid) return ((st.st_mode >> 6) & want) == want;
  if (st.st_gid == gid) return ((st.st_mode >> 3) & want) == want;
  return (st.st_mode & want) == want;
}

std::string ModeString(const struct stat& st) {
  return absl::StrCat("owner ", st.st_uid, ":", st.st_gid, " mode 0",
                      absl::StrFormat("%o", st.st_mode & 07777));
}

absl::Status CopyFileContents(const std::string& from, const std::string& to) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError(absl::StrCat("open ", from));
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!out) return ErrnoError(absl::StrCat("create ", to));
  auto fail = [&](const std::string& what) {
    int err = errno;
    unlink(to.c_str());
    return ErrnoError(err, absl::StrCat(what, " ", from, " -> ", to));
  };
  // Holes stay holes: a live fork's memory layer is a sparse file whose holes
  // mean "read the layer below".
  struct stat st;
  if (fstat(in.get(), &st) < 0) return fail("stat");
  if (ftruncate(out.get(), st.st_size) < 0) return fail("truncate");
  absl::Status copied = CopyDataExtents(in.get(), out.get(), st.st_size, from, to, CancelToken());
  if (!copied.ok()) unlink(to.c_str());
  return copied;
}

}  // namespace

// ------------------------------------------------------------ JailerBinary

absl::StatusOr<JailerBinary> JailerBinary::Probe(const std::string& path, absl::Duration timeout) {
  std::string output;
  ASSIGN_OR_RETURN(Version version, ProbeVersion(path, "jailer binary", timeout, &output));
  if (!absl::StartsWith(absl::StripLeadingAsciiWhitespace(output), "Jailer")) {
    return absl::FailedPreconditionError(
        absl::StrCat("jailer binary ", path, " is not Firecracker's jailer: --version printed \"",
                     absl::CEscape(absl::StripAsciiWhitespace(output).substr(0, 100)), "\""));
  }
  if (version < kMinimumJailerVersion) {
    return absl::FailedPreconditionError(absl::StrCat("jailer binary ", path, " is jailer ",
                                                      version.ToString(), "; fcvm needs ",
                                                      kMinimumJailerVersion.ToString(), " or later"));
  }
  return JailerBinary(path, version);
}

// --------------------------------------------------------------- JailPaths

absl::StatusOr<std::string> JailPaths::HostPath(const std::string& jail_path) const {
  if (jail_path.size() < 2 || jail_path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("jail path \"", jail_path, "\": must be absolute (\"/x\")"));
  }
  for (absl::string_view part : absl::StrSplit(absl::string_view(jail_path).substr(1), '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("jail path \"", jail_path, "\": no empty, \".\" or \"..\" components"));
    }
  }
  return absl::StrCat(chroot_dir, jail_path);
}

absl::StatusOr<std::string> JailPaths::JailPath(const std::string& host_path) const {
  std::string prefix = absl::StrCat(chroot_dir, "/");
  if (!absl::StartsWith(host_path, prefix) || host_path.size() == prefix.size()) {
    return absl::InvalidArgumentError(absl::StrCat(host_path, " is not inside the chroot ", chroot_dir));
  }
  return host_path.substr(chroot_dir.size());
}

absl::StatusOr<JailPaths> JailPathsFor(const std::string& firecracker_path,
                                       const std::string& chroot_base_dir, const std::string& id) {
  if (!ValidJailId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("jail: bad VM id \"", id, "\" (1-64 characters of A-Z a-z 0-9 -)"));
  }
  if (chroot_base_dir.empty() || chroot_base_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("jail: chroot base dir \"", chroot_base_dir, "\" is not absolute"));
  }
  // The jailer names the chroot after the canonical exec file.
  char real[PATH_MAX];
  if (realpath(firecracker_path.c_str(), real) == nullptr) {
    return ErrnoError(absl::StrCat("jail: firecracker binary ", firecracker_path));
  }
  std::string name = real;
  name = name.substr(name.rfind('/') + 1);
  if (!absl::StrContains(name, "firecracker")) {
    return absl::InvalidArgumentError(
        absl::StrCat("jail: the jailer only execs files whose name contains "
                     "\"firecracker\", not ",
                     real));
  }
  std::string base = chroot_base_dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  JailPaths paths;
  paths.jail_dir = absl::StrCat(base == "/" ? "" : base, "/", name, "/", id);
  paths.chroot_dir = absl::StrCat(paths.jail_dir, "/root");
  return paths;
}

absl::Status PrepareJail(const JailPaths& paths) {
  // Only root needs to enter jail_dir: Firecracker's "/" is chroot_dir.
  RETURN_IF_ERROR(MakeDirs(paths.jail_dir, 0700));
  if (chmod(paths.jail_dir.c_str(), 0700) < 0) return ErrnoError(absl::StrCat("chmod ", paths.jail_dir));
  RETURN_IF_ERROR(MakeDirs(paths.chroot_dir, 0700));
  return absl::OkStatus();
}

absl::StatusOr<std::optional<BindMount>> PlaceFile(const JailPaths& paths, uint32_t uid, uint32_t gid,
                                                   const JailFile& file, bool allow_bind) {
  ASSIGN_OR_RETURN(std::string target, paths.HostPath(file.jail_path));
  const std::string what = absl::StrCat("jail file ", file.host_path, " (", file.jail_path, ")");
  struct stat st;
  if (stat(file.host_path.c_str(), &st) < 0) return ErrnoError(what);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(what, ": not a regular file"));
  const bool can_read = Allowed(st, uid, gid, 4);
  const bool can_write = Allowed(st, uid, gid, 2);
  if (!can_read || (file.writable && !can_write)) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": uid ", uid, " gid ", gid, " may not ",
                                                      file.writable ? "write" : "read", " it (",
                                                      ModeString(st), ")"));
  }
  if (file.host_path == target) return std::nullopt;
  RETURN_IF_ERROR(MakeDirs(DirName(target), 0755));
  if (unlink(target.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("unlink ", target));
  // A read-only file the VM could write must not be shared by a link.
  const bool link_ok = file.writable || !can_write;
  if (link_ok) {
    if (link(file.host_path.c_str(), target.c_str()) == 0) return std::nullopt;
    if (errno != EXDEV) return ErrnoError(absl::StrCat("link ", file.host_path, " -> ", target));
  }
  if (!allow_bind) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": cannot be hard-linked into the running jail (",
                     link_ok ? "another file system" : "the VM's uid could write it",
                     ") and nothing can be mounted there"));
  }
  // The bind mount needs something to cover.
  UniqueFd placeholder(::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!placeholder) return ErrnoError(absl::StrCat("create ", target));
  return BindMount{.source = file.host_path, .target = target, .read_only = !file.writable};
}

absl::Status ChownForJail(const std::string& host_path, uint32_t uid, gid_t gid, mode_t mode) {
  if (chown(host_path.c_str(), uid, gid) < 0) return ErrnoError(absl::StrCat("chown ", host_path));
  if (chmod(host_path.c_str(), mode) < 0) return ErrnoError(absl::StrCat("chmod ", host_path));
  return absl::OkStatus();
}

absl::Status TakeFromJail(const std::string& host_path, const std::string& dest, mode_t mode) {
  // Ownership first, so that the file never shows outside the jail as the
  // VM's.
  if (chown(host_path.c_str(), 0, 0) < 0) return ErrnoError(absl::StrCat("chown ", host_path));
  if (chmod(host_path.c_str(), mode) < 0) return ErrnoError(absl::StrCat("chmod ", host_path));
  if (rename(host_path.c_str(), dest.c_str()) == 0) return absl::OkStatus();
  if (errno != EXDEV) return ErrnoError(absl::StrCat("rename ", host_path, " -> ", dest));
  std::string tmp = absl::StrCat(dest, ".tmp.", getpid());
  RETURN_IF_ERROR(CopyFileContents(host_path, tmp));
  if (chmod(tmp.c_str(), mode) < 0 || rename(tmp.c_str(), dest.c_str()) < 0) {
    int err = errno;
    unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("rename ", tmp, " -> ", dest));
  }
  if (unlink(host_path.c_str()) < 0) return ErrnoError(absl::StrCat("unlink ", host_path));
  return absl::OkStatus();
}

absl::Status RemoveJail(const JailPaths& paths, const CgroupHost& cgroups, const std::string& parent_cgroup,
                        const std::string& id) {
  RETURN_IF_ERROR(RemoveVmCgroups(cgroups, parent_cgroup, id));
  return Annotate(RemoveTree(paths.jail_dir), "remove jail");
}

absl::StatusOr<std::vector<std::string>> ListJails(const std::string& firecracker_path,
                                                   const std::string& chroot_base_dir) {
  ASSIGN_OR_RETURN(JailPaths probe, JailPathsFor(firecracker_path, chroot_base_dir, "x"));
  std::string dir = DirName(probe.jail_dir);
  std::vector<std::string> ids;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return ids;
    return ErrnoError(absl::StrCat("opendir ", dir));
  }
  while (dirent* e = readdir(d)) {
    if (!ValidJailId(e->d_name)) continue;
    if (e->d_type != DT_DIR) {
      // Some file systems do not fill d_type.
      struct stat st;
      if (e->d_type != DT_UNKNOWN || lstat(absl::StrCat(dir, "/", e->d_name).c_str(), &st) < 0 ||
          !S_ISDIR(st.st_mode)) {
        continue;
      }
    }
    ids.emplace_back(e->d_name);
  }
  closedir(d);
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace fcvm::firecracker
