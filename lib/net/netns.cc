#include "lib/net/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <system_error>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "spdlog/spdlog.h"

namespace fcvm::net {
namespace {

// Makes /run/netns a shared mount point (iproute2's netns_add does the same),
// so bind mounts under it propagate into mount namespaces created later (for
// instance a jailer's) and can be unmounted from any of them.
absl::Status PrepareRunDir() {
  static absl::Mutex mu(absl::kConstInit);
  static bool done ABSL_GUARDED_BY(mu) = false;
  absl::MutexLock lock(&mu);
  if (done) return absl::OkStatus();
  RETURN_IF_ERROR(MakeDirs(kNetnsRunDir, 0755));
  if (mount("", kNetnsRunDir, "none", MS_SHARED | MS_REC, nullptr) < 0) {
    if (errno != EINVAL) return ErrnoError(absl::StrCat("make ", kNetnsRunDir, " shared"));
    // Not a mount point yet: bind it onto itself first.
    if (mount(kNetnsRunDir, kNetnsRunDir, "none", MS_BIND | MS_REC, nullptr) < 0) {
      return ErrnoError(absl::StrCat("bind mount ", kNetnsRunDir, " onto itself"));
    }
    if (mount("", kNetnsRunDir, "none", MS_SHARED | MS_REC, nullptr) < 0) {
      return ErrnoError(absl::StrCat("make ", kNetnsRunDir, " shared"));
    }
  }
  done = true;
  return absl::OkStatus();
}

// Runs `fn` on a new thread and waits for it. The thread is where namespace
// changes happen, so the caller's thread never switches namespace.
absl::Status OnHelperThread(absl::FunctionRef<absl::Status()> fn) {
  absl::Status result;
  try {
    std::thread t([&] { result = fn(); });
    t.join();
  } catch (const std::system_error& e) {
    // The only exception here: the thread could not be started.
    return absl::ResourceExhaustedError(absl::StrCat("start namespace helper thread: ", e.what()));
  }
  return result;
}

}  // namespace

std::string NetnsPath(const std::string& name) { return absl::StrCat(kNetnsRunDir, "/", name); }

absl::StatusOr<UniqueFd> CreateNamedNetns(const std::string& name, absl::FunctionRef<absl::Status()> init) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("bad network namespace name \"", name, "\""));
  }
  RETURN_IF_ERROR(PrepareRunDir());
  const std::string path = NetnsPath(name);
  {
    UniqueFd target(open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0));
    if (!target) return ErrnoError(absl::StrCat("create ", path));
  }
  UniqueFd ns_fd;
  absl::Status st = OnHelperThread([&]() -> absl::Status {
    if (unshare(CLONE_NEWNET) < 0) return ErrnoError(absl::StrCat("unshare netns for ", name));
    if (mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) < 0) {
      return ErrnoError(absl::StrCat("bind mount netns onto ", path));
    }
    ns_fd.Reset(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns_fd) return ErrnoError(absl::StrCat("open ", path));
    return init();
  });
  if (!st.ok()) {
    ns_fd.Reset();
    if (absl::Status del = DeleteNamedNetns(name); !del.ok()) {
      spdlog::warn("removing half-made network namespace {}: {}", name, del.ToString());
    }
    return st;
  }
  return ns_fd;
}

absl::Status DeleteNamedNetns(const std::string& name) {
  const std::string path = NetnsPath(name);
  if (umount2(path.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
    return ErrnoError(absl::StrCat("unmount ", path));
  }
  if (unlink(path.c_str()) < 0 && errno != ENOENT) {
    return ErrnoError(absl::StrCat("remove ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> OpenNamedNetns(const std::string& name) {
  const std::string path = NetnsPath(name);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open network namespace ", path));
  return fd;
}

absl::StatusOr<std::vector<std::string>> ListNamedNetns() {
  std::vector<std::string> names;
  DIR* dir = opendir(kNetnsRunDir);
  if (dir == nullptr) {
    if (errno == ENOENT) return names;
    return ErrnoError(absl::StrCat("opendir ", kNetnsRunDir));
  }
  while (dirent* e = readdir(dir)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    names.push_back(std::move(n));
  }
  closedir(dir);
  return names;
}

absl::Status RunInNetns(int netns_fd, absl::FunctionRef<absl::Status()> fn) {
  return OnHelperThread([&]() -> absl::Status {
    if (setns(netns_fd, CLONE_NEWNET) < 0) return ErrnoError("setns into network namespace");
    return fn();
  });
}

absl::Status WriteSysctl(const std::string& key, const std::string& value) {
  const std::string path = absl::StrCat("/proc/sys/", key);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  if (write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size())) {
    return ErrnoError(absl::StrCat("write ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSysctl(const std::string& key) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(absl::StrCat("/proc/sys/", key)));
  return std::string(absl::StripTrailingAsciiWhitespace(text));
}

absl::StatusOr<ScopedNetns> ScopedNetns::Create(const std::string& name) {
  ASSIGN_OR_RETURN(UniqueFd fd, CreateNamedNetns(name, [] { return absl::OkStatus(); }));
  return ScopedNetns(name, std::move(fd));
}

ScopedNetns& ScopedNetns::operator=(ScopedNetns&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    fd_ = std::move(other.fd_);
    other.name_.clear();
  }
  return *this;
}

ScopedNetns::~ScopedNetns() { Reset(); }

void ScopedNetns::Reset() {
  fd_.Reset();
  if (name_.empty()) return;
  if (absl::Status st = DeleteNamedNetns(name_); !st.ok()) {
    spdlog::warn("delete network namespace {}: {}", name_, st.ToString());
  }
  name_.clear();
}

}  // namespace fcvm::net
