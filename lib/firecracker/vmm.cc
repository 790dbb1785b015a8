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

// Creates or truncates `path` with `mode` (also when it existed with
// another mode).
absl::StatusOr<UniqueFd> CreateFile(const std::string& path, int flags, mode_t mode = 0640) {
  UniqueFd fd(::open(path.c_str(), flags | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return ErrnoError(absl::StrCat("create ", path));
  if (fchmod(fd.get(), mode) < 0) return ErrnoError(absl::StrCat("chmod ", path));
  return fd;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
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

// `open_path` is where fcvm finds the file, `path` what the caller asked for.
absl::Status CheckSnapshotFile(const std::string& what, const std::string& open_path,
                               const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("snapshot load: no ", what, " path"));
  struct stat st;
  if (stat(open_path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("snapshot load: ", what, " ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot load: ", what, " ", path, " is not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("snapshot load: ", what, " ", path, " is empty"));
  }
  return absl::OkStatus();
}

absl::Status CheckKernelImageAt(const std::string& open_path, const std::string& path);

off_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

}  // namespace

// ------------------------------------------------------- FirecrackerBinary

absl::StatusOr<FirecrackerBinary> FirecrackerBinary::Probe(const std::string& path, absl::Duration timeout) {
  ASSIGN_OR_RETURN(Version version, ProbeVersion(path, "firecracker binary", timeout));
  RETURN_IF_ERROR(CheckSupported(version, absl::StrCat("firecracker binary ", path)));
  absl::StatusOr<Version> format = ProbeSnapshotFormat(path, timeout);
  return FirecrackerBinary(path, version, format.value_or(Version{}));
}

// --------------------------------------------------------------- console

std::string ConsoleFifoPath(const std::string& vm_dir) { return absl::StrCat(vm_dir, "/console.fifo"); }

absl::StatusOr<UniqueFd> OpenConsoleFifo(const std::string& vm_dir, bool create) {
  const std::string path = ConsoleFifoPath(vm_dir);
  if (create) {
    if (unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("unlink ", path));
    if (mkfifo(path.c_str(), 0600) < 0) return ErrnoError(absl::StrCat("mkfifo ", path));
  } else {
    struct stat st;
    if (lstat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat("stat ", path));
    if (!S_ISFIFO(st.st_mode)) return absl::FailedPreconditionError(absl::StrCat(path, " is not a FIFO"));
  }
  // Non-blocking so that opening does not wait for a writer; reads block.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  int flags = fcntl(fd.get(), F_GETFL);
  if (flags < 0 || fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) < 0)
    return ErrnoError(absl::StrCat("fcntl ", path));
  return fd;
}

absl::StatusOr<std::unique_ptr<ConsoleCapture>> ReattachConsole(const std::string& vm_dir,
                                                                size_t max_log_bytes, size_t ring_lines) {
  ASSIGN_OR_RETURN(UniqueFd fd, OpenConsoleFifo(vm_dir, /*create=*/false));
  return ConsoleCapture::Start(std::move(fd), {.log_path = absl::StrCat(vm_dir, "/console.log"),
                                               .append = true,
                                               .max_log_bytes = max_log_bytes,
                                               .ring_lines = ring_lines});
}

// ------------------------------------------------------------------- Vmm

absl::StatusOr<std::unique_ptr<Vmm>> Vmm::Launch(const FirecrackerBinary& binary, VmmOptions options) {
  if (options.vm_dir.empty()) return absl::InvalidArgumentError("launch: empty vm_dir");
  if (!ValidId(options.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: bad VM id \"", options.id, "\" (1-64 characters of A-Z a-z 0-9 -)"));
  }
  std::unique_ptr<Vmm> vmm(new Vmm());
  vmm->options_ = std::move(options);
  const VmmOptions& opts = vmm->options_;
  const std::string& dir = opts.vm_dir;
  vmm->console_log_path_ = absl::StrCat(dir, "/console.log");
  vmm->log_path_ = absl::StrCat(dir, "/firecracker.log");
  vmm->stderr_path_ = absl::StrCat(dir, "/firecracker.stderr");
  vmm->metrics_path_ = absl::StrCat(dir, "/metrics.json");
  RETURN_IF_ERROR(MakeDirs(dir, 0750));
  ASSIGN_OR_RETURN(UniqueFd stderr_fd, CreateFile(vmm->stderr_path_, O_WRONLY | O_APPEND));

  SpawnOptions spawn;
  spawn.env = std::vector<std::string>{};  // Firecracker needs no environment
  spawn.netns_fd = opts.netns_fd;
  spawn.parent_death_signal = opts.parent_death_signal;
  spawn.memory_merge = opts.memory_merge;
  if (opts.jail.has_value()) {
    RETURN_IF_ERROR(vmm->PrepareJailedSpawn(binary, opts, &spawn));
  } else {
    vmm->api_socket_path_ = absl::StrCat(dir, "/api.sock");
    if (vmm->api_socket_path_.size() > kMaxSocketPath) {
      return absl::InvalidArgumentError(absl::StrCat("launch: API socket path ", vmm->api_socket_path_,
                                                     " is longer than ", kMaxSocketPath, " bytes"));
    }
    RETURN_IF_ERROR(RemoveStaleSocket(vmm->api_socket_path_));
    { ASSIGN_OR_RETURN(UniqueFd log, CreateFile(vmm->log_path_, O_WRONLY)); }
    { ASSIGN_OR_RETURN(UniqueFd metrics, CreateFile(vmm->metrics_path_, O_WRONLY)); }
    spawn.argv = {binary.path(),  "--api-sock",   vmm->api_socket_path_, "--id",
                  opts.id,        "--log-path",   vmm->log_path_,        "--level",
                  opts.log_level, "--show-level", "--metrics-path",      vmm->metrics_path_};
    spawn.argv.insert(spawn.argv.end(), opts.extra_args.begin(), opts.extra_args.end());
    spawn.new_mount_namespace = opts.new_mount_namespace || !opts.bind_mounts.empty();
    spawn.bind_mounts = opts.bind_mounts;
    // Relative paths given to Firecracker resolve in the VM's own directory:
    // a vsock's uds_path, kept in a snapshot, is relative so that every clone
    // of it listens in its own directory (the jail's chroot does the same).
    spawn.cwd = dir;
  }

  ASSIGN_OR_RETURN(UniqueFd console_r, OpenConsoleFifo(dir, /*create=*/true));
  UniqueFd console_w(::open(ConsoleFifoPath(dir).c_str(), O_WRONLY | O_CLOEXEC));
  if (!console_w) return ErrnoError(absl::StrCat("open ", ConsoleFifoPath(dir), " for writing"));
  spawn.fds = {{console_w.get(), 1}, {stderr_fd.get(), 2}};

  absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(vmm->process_, Process::Spawn(spawn));
  // From here on, any failure kills Firecracker (Vmm's destructor).
  console_w.Reset();
  stderr_fd.Reset();
  ASSIGN_OR_RETURN(vmm->console_,
                   ConsoleCapture::Start(std::move(console_r), {.log_path = vmm->console_log_path_,
                                                                .max_log_bytes = opts.console_max_bytes,
                                                                .ring_lines = opts.console_ring_lines}));
  vmm->api_ = std::make_unique<ApiClient>(vmm->api_socket_path_, opts.api_timeout);
  RETURN_IF_ERROR(vmm->WaitForApi(start));
  vmm->startup_time_ = absl::Now() - start;
  return vmm;
}

absl::Status Vmm::PrepareJailedSpawn(const FirecrackerBinary& binary, const VmmOptions& opts,
                                     SpawnOptions* spawn) {
  const JailOptions& jail = *opts.jail;
  if (!jail.jailer.has_value()) return absl::InvalidArgumentError("launch: jail without a jailer binary");
  if (jail.uid == 0 || jail.gid == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: jail uid ", jail.uid, " gid ", jail.gid, ": both must be non-zero"));
  }
  if (!opts.bind_mounts.empty() || opts.new_mount_namespace) {
    return absl::InvalidArgumentError("launch: bind_mounts do not apply to a jailed VM (use jail.files)");
  }
  if (jail.limits.pids_max != 0 && jail.limits.pids_max < MinPids(1)) {
    return absl::InvalidArgumentError(absl::StrCat("launch: pids limit ", jail.limits.pids_max,
                                                   " is below what Firecracker needs: ", MinPids(1)));
  }
  ASSIGN_OR_RETURN(jail_paths_, JailPathsFor(binary.path(), jail.chroot_base_dir, opts.id));
  if (jail.cgroup_host.has_value()) {
    cgroup_host_ = *jail.cgroup_host;
  } else {
    ASSIGN_OR_RETURN(cgroup_host_, CgroupHost::Detect());
  }
  ASSIGN_OR_RETURN(cgroup_plan_,
                   PlanCgroups(cgroup_host_, jail.cgroup_version, jail.limits, jail.parent_cgroup));
  constexpr char kApiSocket[] = "/run/firecracker.socket";
  api_socket_path_ = absl::StrCat(jail_paths_.chroot_dir, kApiSocket);
  if (api_socket_path_.size() > kMaxSocketPath) {
    return absl::InvalidArgumentError(absl::StrCat("launch: API socket path ", api_socket_path_,
                                                   " is longer than ", kMaxSocketPath,
                                                   " bytes (shorten the chroot base dir)"));
  }

  // Never tear down the jail of a VM that still runs (an id used twice).
  for (const std::string& cg : VmCgroupDirs(cgroup_host_, cgroup_plan_, opts.id)) {
    absl::StatusOr<std::string> procs = ReadFile(absl::StrCat(cg, "/cgroup.procs"));
    if (procs.ok() && !absl::StripAsciiWhitespace(*procs).empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("launch: jail ", opts.id, " is in use: its cgroup ", cg, " holds processes"));
    }
  }
  // From here on the jail is ours: Kill (and so a failed launch) removes it.
  owns_jail_ = true;
  RETURN_IF_ERROR(PrepareJail(jail_paths_));
  // What an earlier jailer left in this chroot makes the next one fail
  // (mknod and the pid file refuse to replace a file); the caller's files stay.
  const std::string& root = jail_paths_.chroot_dir;
  std::string exec_name = DirName(jail_paths_.jail_dir);
  exec_name = exec_name.substr(exec_name.rfind('/') + 1);
  for (const std::string& leftover :
       {absl::StrCat(root, "/dev"), absl::StrCat(root, "/run"), absl::StrCat(root, "/", exec_name),
        absl::StrCat(root, "/", exec_name, ".pid")}) {
    RETURN_IF_ERROR(RemoveTree(leftover));
  }

  // Firecracker's log and metrics stay in vm_dir, owned by the VM's uid (it
  // opens them by path inside the chroot).
  std::vector<JailFile> files = jail.files;
  for (const std::string* path : {&log_path_, &metrics_path_}) {
    ASSIGN_OR_RETURN(UniqueFd fd, CreateFile(*path, O_WRONLY, 0600));
    if (fchown(fd.get(), jail.uid, jail.gid) < 0) return ErrnoError(absl::StrCat("chown ", *path));
  }
  files.push_back({.host_path = log_path_, .jail_path = "/firecracker.log", .writable = true});
  files.push_back({.host_path = metrics_path_, .jail_path = "/metrics.json", .writable = true});
  for (const JailFile& f : files) {
    ASSIGN_OR_RETURN(std::optional<BindMount> bind,
                     firecracker::PlaceFile(jail_paths_, jail.uid, jail.gid, f, /*allow_bind=*/true));
    if (bind.has_value()) spawn->bind_mounts.push_back(std::move(*bind));
  }
  // Bind mounts are made in a private mount namespace of the jailer's
  // process; the jailer's own mount namespace (and its recursive bind of the
  // chroot) inherits them.
  spawn->new_mount_namespace = !spawn->bind_mounts.empty();
  spawn->new_pid_namespace = jail.new_pid_ns;

  spawn->argv = {jail.jailer->path(),
                 "--id",
                 opts.id,
                 "--exec-file",
                 binary.path(),
                 "--uid",
                 absl::StrCat(jail.uid),
                 "--gid",
                 absl::StrCat(jail.gid),
                 "--chroot-base-dir",
                 jail.chroot_base_dir};
  if (!jail.netns_path.empty()) {
    spawn->argv.push_back("--netns");
    spawn->argv.push_back(jail.netns_path);
  }
  for (std::string& a : cgroup_plan_.JailerArgs()) spawn->argv.push_back(std::move(a));
  spawn->argv.insert(spawn->argv.end(), jail.extra_jailer_args.begin(), jail.extra_jailer_args.end());
  // The jailer adds --id; the rest is Firecracker's, with jail paths.
  for (const char* a : {"--", "--api-sock", kApiSocket, "--log-path", "/firecracker.log", "--level"}) {
    spawn->argv.push_back(a);
  }
  spawn->argv.push_back(opts.log_level);
  for (const char* a : {"--show-level", "--metrics-path", "/metrics.json"}) spawn->argv.push_back(a);
  spawn->argv.insert(spawn->argv.end(), opts.extra_args.begin(), opts.extra_args.end());
  return absl::OkStatus();
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
  // Jailed, the process is the jailer until it execs Firecracker.
  return absl::StrCat("firecracker ", options_.id, " (", jailed() ? "jailed, " : "", "pid ", process_.pid(),
                      ") exited: ", exit.ToString());
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
  if (owns_jail_) {
    // Firecracker is reaped (or never ran): its cgroups are empty.
    RETURN_IF_ERROR(RemoveJail(jail_paths_, cgroup_host_, cgroup_plan_.parent, options_.id));
    owns_jail_ = false;
  }
  if (!exit_.has_value()) return absl::FailedPreconditionError("kill: no process");
  return *exit_;
}

pid_t Vmm::Detach() {
  if (console_ != nullptr) console_->Stop();
  api_socket_path_.clear();  // not ours to remove any more
  owns_jail_ = false;
  return process_.Release();
}

std::string Vmm::SeenByVmm(const std::string& path) const {
  if (path.empty() || path[0] != '/' || !process_.valid()) return path;
  return absl::StrCat("/proc/", process_.pid(), "/root", path);
}

std::string Vmm::Describe(const std::string& path) const {
  if (!jailed()) return path;
  absl::StatusOr<std::string> host = jail_paths_.HostPath(path);
  return host.ok() ? absl::StrCat(path, " (host: ", *host, ")") : path;
}

absl::StatusOr<std::string> Vmm::HostPath(const std::string& vmm_path) const {
  if (!jailed()) return vmm_path;
  return jail_paths_.HostPath(vmm_path);
}

absl::StatusOr<std::string> Vmm::JailPath(const std::string& host_path) const {
  if (!jailed()) return host_path;
  return jail_paths_.JailPath(host_path);
}

absl::Status Vmm::PlaceFile(const JailFile& file) {
  if (!jailed()) return absl::FailedPreconditionError("place file: the VM is not jailed");
  return firecracker::PlaceFile(jail_paths_, options_.jail->uid, options_.jail->gid, file,
                                /*allow_bind=*/false)
      .status();
}

absl::Status Vmm::UpdateCgroupLimits(const CgroupLimits& limits) {
  if (!jailed()) return absl::FailedPreconditionError("cgroup limits: the VM is not jailed");
  ASSIGN_OR_RETURN(CgroupPlan plan,
                   PlanCgroups(cgroup_host_, cgroup_plan_.version, limits, cgroup_plan_.parent));
  for (const std::string& c : plan.controllers) {
    if (!cgroup_plan_.controllers.count(c)) {
      return absl::FailedPreconditionError(absl::StrCat("cgroup limits of ", options_.id,
                                                        ": its cgroups have no ", c, " controller (set a ", c,
                                                        " limit at launch)"));
    }
  }
  RETURN_IF_ERROR(Annotate(WriteVmCgroupSettings(cgroup_host_, plan, options_.id), "update cgroup limits"));
  // The plan now lists every file with its latest value.
  for (const auto& [file, value] : plan.settings) {
    auto it = std::find_if(cgroup_plan_.settings.begin(), cgroup_plan_.settings.end(),
                           [&](const auto& kv) { return kv.first == file; });
    if (it != cgroup_plan_.settings.end()) {
      it->second = value;
    } else {
      cgroup_plan_.settings.emplace_back(file, value);
    }
  }
  ASSIGN_OR_RETURN(options_.jail->limits, ReadVmCgroupLimits(cgroup_host_, cgroup_plan_, options_.id));
  return absl::OkStatus();
}

absl::StatusOr<CgroupLimits> Vmm::ReadCgroupLimits() const {
  if (!jailed()) return absl::FailedPreconditionError("cgroup limits: the VM is not jailed");
  return ReadVmCgroupLimits(cgroup_host_, cgroup_plan_, options_.id);
}

absl::Status Vmm::Boot(const BootSpec& spec) {
  if (jailed()) {
    RETURN_IF_ERROR(Annotate(CheckLimitsForGuest(options_.jail->limits, spec.machine.vcpu_count,
                                                 static_cast<uint64_t>(spec.machine.mem_size_mib)),
                             "boot"));
  }
  const std::string& kernel = spec.boot_source.kernel_image_path;
  RETURN_IF_ERROR(CheckKernelImageAt(SeenByVmm(kernel), Describe(kernel)));
  if (spec.boot_source.initrd_path.has_value()) {
    struct stat st;
    if (stat(SeenByVmm(*spec.boot_source.initrd_path).c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("initrd ", Describe(*spec.boot_source.initrd_path)));
    }
  }
  for (const Drive& d : spec.drives) {
    // Resolved as Firecracker will see it: in its chroot or mount namespace,
    // where per-VM bind mounts may put a different file at this path.
    struct stat st;
    if (stat(SeenByVmm(d.path_on_host).c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("drive ", d.drive_id, ": ", Describe(d.path_on_host)));
    }
  }
  RETURN_IF_ERROR(Explain(api_->PutBootSource(spec.boot_source)));
  RETURN_IF_ERROR(Explain(api_->PutMachineConfig(spec.machine)));
  for (const Drive& d : spec.drives) RETURN_IF_ERROR(Explain(api_->PutDrive(d)));
  for (const NetworkInterface& n : spec.network_interfaces)
    RETURN_IF_ERROR(Explain(api_->PutNetworkInterface(n)));
  if (spec.mmds_config.has_value()) RETURN_IF_ERROR(Explain(api_->PutMmdsConfig(*spec.mmds_config)));
  if (spec.mmds_data.has_value()) RETURN_IF_ERROR(Explain(api_->PutMmds(*spec.mmds_data)));
  if (spec.vsock.has_value()) RETURN_IF_ERROR(Explain(api_->PutVsock(*spec.vsock)));
  return Explain(api_->InstanceStart(), absl::Milliseconds(100));
}

absl::Status Vmm::LoadSnapshot(const SnapshotLoad& load, absl::Duration timeout) {
  RETURN_IF_ERROR(CheckSnapshotFile("vmstate", SeenByVmm(load.snapshot_path), Describe(load.snapshot_path)));
  const std::string mem_seen = SeenByVmm(load.backend_path);
  const std::string mem_name = Describe(load.backend_path);
  if (load.backend == MemBackend::kFile) {
    RETURN_IF_ERROR(CheckSnapshotFile("memory file", mem_seen, mem_name));
    off_t size = FileSize(mem_seen);
    if (size % 4096 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot load: memory file ", mem_name, " (", size,
                                                     " bytes) is not a whole number of pages"));
    }
    if (jailed()) {
      RETURN_IF_ERROR(
          Annotate(CheckLimitsForGuest(options_.jail->limits, 1, static_cast<uint64_t>(size) >> 20),
                   absl::StrCat("snapshot load: memory file ", mem_name)));
    }
  } else {
    struct stat st;
    if (stat(mem_seen.c_str(), &st) < 0) {
      return ErrnoError(absl::StrCat("snapshot load: page server socket ", mem_name));
    }
    if (!S_ISSOCK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("snapshot load: page server socket ", mem_name, " is not a socket"));
    }
  }
  absl::Status st = api_->LoadSnapshot(load, timeout);
  if (st.ok()) return st;
  // Firecracker's wording for a memory file smaller than the snapshot's
  // guest memory does not say which file; say it.
  if (load.backend == MemBackend::kFile &&
      absl::StrContains(st.message(), "exceeds largest possible file offset")) {
    st = absl::Status(st.code(),
                      absl::StrCat("memory file ", mem_name, " (", FileSize(mem_seen),
                                   " bytes) is smaller than the snapshot's guest memory: ", st.message()));
  }
  // A failed load always ends the process: wait for it, to report how.
  return Explain(Annotate(st, absl::StrCat("load snapshot ", load.snapshot_path)), absl::Seconds(2));
}

absl::Status Vmm::CreateSnapshot(const SnapshotCreate& create, absl::Duration timeout) {
  return Explain(api_->CreateSnapshot(create, timeout));
}

absl::Status CheckKernelImage(const std::string& path) { return CheckKernelImageAt(path, path); }

namespace {

absl::Status CheckKernelImageAt(const std::string& open_path, const std::string& path) {
  if (open_path.empty()) return absl::InvalidArgumentError("kernel: empty path");
  UniqueFd fd(::open(open_path.c_str(), O_RDONLY | O_CLOEXEC));
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

}  // namespace

}  // namespace fcvm::firecracker
