#include "lib/firecracker/vmm.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {
namespace {

constexpr size_t kMaxSocketPath = 107;

// The last `n` lines of the last 16 KiB of a file; empty on any error.
std::vector<std::string> TailLines(const std::string& path, size_t n) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return {};
  off_t start = std::max<off_t>(0, st.st_size - 16384);
  std::string buf(static_cast<size_t>(st.st_size - start), '\0');
  ssize_t got = pread(fd.get(), buf.data(), buf.size(), start);
  if (got <= 0) return {};
  buf.resize(static_cast<size_t>(got));
  std::vector<std::string> lines;
  for (absl::string_view l : absl::StrSplit(buf, '\n', absl::SkipWhitespace())) {
    lines.emplace_back(absl::StripTrailingAsciiWhitespace(l));
  }
  if (start > 0 && !lines.empty()) lines.erase(lines.begin());  // likely a cut line
  if (lines.size() > n) lines.erase(lines.begin(), lines.end() - static_cast<std::ptrdiff_t>(n));
  return lines;
}

absl::StatusOr<UniqueFd> CreateFile(const std::string& path, int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (!fd) return ErrnoError(absl::StrCat("create ", path));
  return fd;
}

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-'; });
}

// Removes a stale socket at `path` (Firecracker refuses to start when its
// API socket path exists). Anything else there is an error.
absl::Status RemoveStaleSocket(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(absl::StrCat("stat ", path));
  }
  if (!S_ISSOCK(st.st_mode))
    return absl::AlreadyExistsError(absl::StrCat(path, " exists and is not a socket"));
  if (unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("unlink ", path));
  return absl::OkStatus();
}

absl::Status CheckSnapshotFile(const std::string& what, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("snapshot load: no ", what, " path"));
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("snapshot load: ", what, " ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot load: ", what, " ", path, " is not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("snapshot load: ", what, " ", path, " is empty"));
  }
  return absl::OkStatus();
}

off_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

}  // namespace

// ------------------------------------------------------- FirecrackerBinary

absl::StatusOr<FirecrackerBinary> FirecrackerBinary::Probe(const std::string& path, absl::Duration timeout) {
  if (path.empty()) return absl::InvalidArgumentError("firecracker binary: empty path");
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("firecracker binary ", path));
  if (!S_ISREG(st.st_mode) || access(path.c_str(), X_OK) < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("firecracker binary ", path, " is not an executable file"));
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd out_r(p[0]);
  UniqueFd out_w(p[1]);
  ASSIGN_OR_RETURN(Process proc, Process::Spawn({.argv = {path, "--version"},
                                                 .fds = {{out_w.get(), 1}, {out_w.get(), 2}}}));
  out_w.Reset();

  absl::Time deadline = absl::Now() + timeout;
  std::string output;
  char buf[4096];
  while (output.size() < 65536) {
    int wait_ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    struct pollfd pfd = {out_r.get(), POLLIN, 0};
    int r = poll(&pfd, 1, wait_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("poll");
    if (r == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(path, " --version: no answer within ", absl::FormatDuration(timeout)));
    }
    ssize_t n = read(out_r.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<size_t>(n));
  }
  absl::StatusOr<ExitStatus> exit = proc.Wait(std::max(absl::ZeroDuration(), deadline - absl::Now()));
  if (!exit.ok()) return Annotate(exit.status(), absl::StrCat(path, " --version"));
  std::string quoted = absl::CEscape(absl::StripAsciiWhitespace(output).substr(0, 300));
  if (!exit->success()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " --version failed (", exit->ToString(), "): \"", quoted, "\""));
  }
  absl::StatusOr<Version> version = ParseVersion(output);
  if (!version.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " --version printed no version: \"", quoted, "\""));
  }
  RETURN_IF_ERROR(CheckSupported(*version, absl::StrCat("firecracker binary ", path)));
  return FirecrackerBinary(path, *version);
}

// ------------------------------------------------------------------- Vmm

absl::StatusOr<std::unique_ptr<Vmm>> Vmm::Launch(const FirecrackerBinary& binary, VmmOptions options) {
  if (options.vm_dir.empty()) return absl::InvalidArgumentError("launch: empty vm_dir");
  if (!ValidId(options.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: bad VM id \"", options.id, "\" (1-64 characters of A-Z a-z 0-9 -)"));
  }
  std::unique_ptr<Vmm> vmm(new Vmm());
  const std::string& dir = options.vm_dir;
  vmm->api_socket_path_ = absl::StrCat(dir, "/api.sock");
  vmm->console_log_path_ = absl::StrCat(dir, "/console.log");
  vmm->log_path_ = absl::StrCat(dir, "/firecracker.log");
  vmm->stderr_path_ = absl::StrCat(dir, "/firecracker.stderr");
  vmm->metrics_path_ = absl::StrCat(dir, "/metrics.json");
  if (vmm->api_socket_path_.size() > kMaxSocketPath) {
    return absl::InvalidArgumentError(absl::StrCat("launch: API socket path ", vmm->api_socket_path_,
                                                   " is longer than ", kMaxSocketPath, " bytes"));
  }
  RETURN_IF_ERROR(MakeDirs(dir, 0750));
  RETURN_IF_ERROR(RemoveStaleSocket(vmm->api_socket_path_));
  { ASSIGN_OR_RETURN(UniqueFd log, CreateFile(vmm->log_path_, O_WRONLY)); }
  { ASSIGN_OR_RETURN(UniqueFd metrics, CreateFile(vmm->metrics_path_, O_WRONLY)); }
  ASSIGN_OR_RETURN(UniqueFd stderr_fd, CreateFile(vmm->stderr_path_, O_WRONLY | O_APPEND));

  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd console_r(p[0]);
  UniqueFd console_w(p[1]);

  SpawnOptions spawn;
  spawn.argv = {binary.path(),     "--api-sock",   vmm->api_socket_path_, "--id",
                options.id,        "--log-path",   vmm->log_path_,        "--level",
                options.log_level, "--show-level", "--metrics-path",      vmm->metrics_path_};
  spawn.argv.insert(spawn.argv.end(), options.extra_args.begin(), options.extra_args.end());
  spawn.env = std::vector<std::string>{};  // Firecracker needs no environment
  spawn.fds = {{console_w.get(), 1}, {stderr_fd.get(), 2}};
  spawn.netns_fd = options.netns_fd;
  spawn.new_mount_namespace = options.new_mount_namespace || !options.bind_mounts.empty();
  spawn.bind_mounts = options.bind_mounts;
  spawn.parent_death_signal = options.parent_death_signal;

  absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(vmm->process_, Process::Spawn(spawn));
  // From here on, any failure kills Firecracker (Vmm's destructor).
  console_w.Reset();
  stderr_fd.Reset();
  ASSIGN_OR_RETURN(vmm->console_,
                   ConsoleCapture::Start(std::move(console_r), {.log_path = vmm->console_log_path_,
                                                                .max_log_bytes = options.console_max_bytes,
                                                                .ring_lines = options.console_ring_lines}));
  vmm->api_ = std::make_unique<ApiClient>(vmm->api_socket_path_, options.api_timeout);
  vmm->options_ = std::move(options);
  RETURN_IF_ERROR(vmm->WaitForApi(start));
  vmm->startup_time_ = absl::Now() - start;
  return vmm;
}

absl::Status Vmm::WaitForApi(absl::Time start) {
  absl::Time deadline = start + options_.start_timeout;
  absl::Duration backoff = absl::Microseconds(500);
  absl::Status last = absl::UnavailableError("not tried");
  while (true) {
    RETURN_IF_ERROR(CheckRunning());
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    absl::StatusOr<InstanceInfo> info = api_->GetInstanceInfo(std::min(left, absl::Seconds(1)));
    if (info.ok()) {
      absl::StatusOr<Version> v = ParseVersion(info->vmm_version);
      if (!v.ok()) return Annotate(v.status(), "GET / vmm_version");
      return CheckSupported(*v, absl::StrCat("firecracker (pid ", pid(), ") on ", api_socket_path_));
    }
    last = info.status();
    // Not listening yet (Unavailable) or slow to answer (DeadlineExceeded):
    // try again. Anything else is an answer, and a wrong one.
    if (last.code() != absl::StatusCode::kUnavailable && last.code() != absl::StatusCode::kDeadlineExceeded) {
      return Annotate(last, absl::StrCat("firecracker ", options_.id, " (pid ", pid(), ") API check"));
    }
    // Sleep on the pidfd, so that an exit ends the wait.
    absl::Duration nap = std::min(backoff, deadline - absl::Now());
    if (nap > absl::ZeroDuration()) {
      struct pollfd pfd = {process_.pidfd(), POLLIN, 0};
      poll(&pfd, 1, static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(nap))));
    }
    backoff = std::min(backoff * 2, absl::Milliseconds(20));
  }
  RETURN_IF_ERROR(CheckRunning());
  return absl::DeadlineExceededError(absl::StrCat(
      "firecracker ", options_.id, " (pid ", pid(), "): API socket ", api_socket_path_, " not ready within ",
      absl::FormatDuration(options_.start_timeout), ": ", last.message(), RecentOutput()));
}

Vmm::~Vmm() { (void)Kill(); }

std::string Vmm::ExitDescription(const ExitStatus& exit) const {
  return absl::StrCat("firecracker ", options_.id, " (pid ", process_.pid(), ") exited: ", exit.ToString());
}

absl::Status Vmm::CheckRunning() {
  if (exit_.has_value()) return absl::UnavailableError(absl::StrCat(ExitDescription(*exit_), RecentOutput()));
  absl::StatusOr<std::optional<ExitStatus>> st = process_.TryWait();
  if (!st.ok()) return st.status();
  if (!st->has_value()) return absl::OkStatus();
  exit_ = **st;
  // Let the drain thread read the console to its end before reporting.
  if (console_ != nullptr) console_->Stop();
  return absl::UnavailableError(absl::StrCat(ExitDescription(*exit_), RecentOutput()));
}

absl::Status Vmm::Explain(const absl::Status& status, absl::Duration grace) {
  if (status.ok()) return status;
  if (!exit_.has_value()) {
    // A dropped connection usually means Firecracker is on its way out.
    if (status.code() == absl::StatusCode::kUnavailable) grace = std::max(grace, absl::Milliseconds(200));
    absl::StatusOr<ExitStatus> e = process_.Wait(std::max(grace, absl::ZeroDuration()));
    if (!e.ok()) return status;  // still running: the error speaks for itself
    exit_ = *e;
    if (console_ != nullptr) console_->Stop();
  }
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), "; ", ExitDescription(*exit_), RecentOutput()));
}

std::string Vmm::RecentOutput() {
  std::string out;
  // Firecracker logs every request at Info; the warnings and errors are
  // what explains a failure.
  std::vector<std::string> log;
  for (std::string& l : TailLines(log_path_, 40)) {
    if (absl::StrContains(l, ":ERROR]") || absl::StrContains(l, ":WARN]")) log.push_back(std::move(l));
  }
  if (log.size() > 4) log.erase(log.begin(), log.end() - 4);
  if (!log.empty()) absl::StrAppend(&out, "; log: [", absl::StrJoin(log, " | "), "]");
  std::vector<std::string> err = TailLines(stderr_path_, 4);
  if (!err.empty()) absl::StrAppend(&out, "; stderr: [", absl::StrJoin(err, " | "), "]");
  if (console_ != nullptr) {
    std::vector<std::string> con = console_->LastLines(4);
    if (!con.empty()) absl::StrAppend(&out, "; console: [", absl::StrJoin(con, " | "), "]");
  }
  return out;
}

absl::StatusOr<ExitStatus> Vmm::Kill() {
  if (process_.valid() && !exit_.has_value()) {
    absl::StatusOr<ExitStatus> e = process_.Kill();
    if (!e.ok()) return e.status();
    exit_ = *e;
  }
  if (console_ != nullptr) console_->Stop();
  if (!api_socket_path_.empty()) {
    struct stat st;
    if (lstat(api_socket_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(api_socket_path_.c_str());
  }
  if (!exit_.has_value()) return absl::FailedPreconditionError("kill: no process");
  return *exit_;
}

pid_t Vmm::Detach() {
  if (console_ != nullptr) console_->Stop();
  api_socket_path_.clear();  // not ours to remove any more
  return process_.Release();
}

absl::Status Vmm::Boot(const BootSpec& spec) {
  RETURN_IF_ERROR(CheckKernelImage(spec.boot_source.kernel_image_path));
  if (spec.boot_source.initrd_path.has_value()) {
    struct stat st;
    if (stat(spec.boot_source.initrd_path->c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("initrd ", *spec.boot_source.initrd_path));
    }
  }
  for (const Drive& d : spec.drives) {
    // Resolved as Firecracker will see it: inside its mount namespace, where
    // per-VM bind mounts may put a different file at this path.
    struct stat st;
    std::string seen = absl::StrCat("/proc/", process_.pid(), "/root", d.path_on_host);
    if (stat(seen.c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("drive ", d.drive_id, ": ", d.path_on_host));
    }
  }
  RETURN_IF_ERROR(Explain(api_->PutBootSource(spec.boot_source)));
  RETURN_IF_ERROR(Explain(api_->PutMachineConfig(spec.machine)));
  for (const Drive& d : spec.drives) RETURN_IF_ERROR(Explain(api_->PutDrive(d)));
  for (const NetworkInterface& n : spec.network_interfaces)
    RETURN_IF_ERROR(Explain(api_->PutNetworkInterface(n)));
  return Explain(api_->InstanceStart(), absl::Milliseconds(100));
}

absl::Status Vmm::LoadSnapshot(const SnapshotLoad& load, absl::Duration timeout) {
  RETURN_IF_ERROR(CheckSnapshotFile("vmstate", load.snapshot_path));
  if (load.backend == MemBackend::kFile) {
    RETURN_IF_ERROR(CheckSnapshotFile("memory file", load.backend_path));
    if (FileSize(load.backend_path) % 4096 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot load: memory file ", load.backend_path, " (",
                                                     FileSize(load.backend_path),
                                                     " bytes) is not a whole number of pages"));
    }
  } else {
    struct stat st;
    if (stat(load.backend_path.c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("snapshot load: page server socket ", load.backend_path));
    }
    if (!S_ISSOCK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("snapshot load: page server socket ", load.backend_path, " is not a socket"));
    }
  }
  absl::Status st = api_->LoadSnapshot(load, timeout);
  if (st.ok()) return st;
  // Firecracker's wording for a memory file smaller than the snapshot's
  // guest memory does not say which file; say it.
  if (load.backend == MemBackend::kFile &&
      absl::StrContains(st.message(), "exceeds largest possible file offset")) {
    st = absl::Status(st.code(),
                      absl::StrCat("memory file ", load.backend_path, " (", FileSize(load.backend_path),
                                   " bytes) is smaller than the snapshot's guest memory: ", st.message()));
  }
  // A failed load always ends the process: wait for it, to report how.
  return Explain(Annotate(st, absl::StrCat("load snapshot ", load.snapshot_path)), absl::Seconds(2));
}

absl::Status Vmm::CreateSnapshot(const SnapshotCreate& create, absl::Duration timeout) {
  return Explain(api_->CreateSnapshot(create, timeout));
}

absl::Status CheckKernelImage(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("kernel: empty path");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("kernel ", path));
  unsigned char magic[4] = {0, 0, 0, 0};
  ssize_t n = pread(fd.get(), magic, sizeof(magic), 0);
  if (n < 0) return ErrnoError(absl::StrCat("read kernel ", path));
  if (n == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F')
    return absl::OkStatus();
  // The message never quotes the file: whoever reaches fcvmd's socket could
  // otherwise read the first bytes of any file fcvmd can.
  return absl::InvalidArgumentError(
      absl::StrCat("kernel ", path, n == 0 ? " is empty" : " is not an ELF image",
                   "; Firecracker on x86_64 boots an uncompressed ELF vmlinux"));
}

}  // namespace fcvm::firecracker
