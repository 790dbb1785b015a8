#include "lib/base/process.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "lib/base/pidfd.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

extern char** environ;

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
// Linux 6.4 (include/uapi/linux/prctl.h); this libc's headers predate it.
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif

namespace fcvm {
namespace {

// What the child reports through its error pipe when a step before exec fails.
enum class ChildStep : int {
  kDupFd = 1,
  kSetns,
  kUnshareMount,
  kPrivateMount,
  kBindMount,
  kRemount,
  kChdir,
  kSetsid,
  kExec,
  kDeathSignal,
  kMemoryMerge,
};

struct ChildReport {
  int step;
  int err;
  int index;  // which bind mount, when step is kBindMount / kRemount
};

// Everything the child needs, prepared in the parent: the child may not
// allocate (another thread may hold the allocator's lock at clone time).
struct ChildPlan {
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<int> src_fds;
  std::vector<int> dst_fds;
  int base_fd = 3;  // every target fd is below this
  int err_fd = -1;
  int netns_fd = -1;
  bool new_mount_namespace = false;
  std::vector<const char*> bind_src;
  std::vector<const char*> bind_dst;
  std::vector<bool> bind_ro;
  const char* cwd = nullptr;
  bool new_session = true;
  int parent_death_signal = 0;
  bool memory_merge = false;
};

[[noreturn]] void ChildFail(int err_fd, ChildStep step, int index = 0) {
  ChildReport report{static_cast<int>(step), errno, index};
  ssize_t ignored = ::write(err_fd, &report, sizeof(report));
  (void)ignored;
  ::_exit(127);
}

// Runs on its own stack in fcvmd's memory (CLONE_VM | CLONE_VFORK) while the
// spawning thread waits: only system calls, no allocation, nothing written
// that the parent reads except through the error pipe.
[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Signal state is inherited across exec for blocked and ignored signals; the
  // daemon blocks SIGTERM/SIGINT and ignores SIGPIPE, a VMM must not inherit that.
  // Every signal is blocked on entry (the parent blocked them around clone),
  // so no handler of the parent's runs here before they are all reset.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  // Move the error pipe and every source fd above all targets first, so that
  // dup2 onto a target never clobbers a source that is still needed.
  int err_fd = fcntl(plan.err_fd, F_DUPFD_CLOEXEC, plan.base_fd);
  if (err_fd < 0) ChildFail(plan.err_fd, ChildStep::kDupFd);
  int moved[64];
  size_t n = plan.src_fds.size();
  for (size_t i = 0; i < n; ++i) {
    moved[i] = fcntl(plan.src_fds[i], F_DUPFD_CLOEXEC, plan.base_fd);
    if (moved[i] < 0) ChildFail(err_fd, ChildStep::kDupFd, static_cast<int>(i));
  }
  for (size_t i = 0; i < n; ++i) {
    if (dup2(moved[i], plan.dst_fds[i]) < 0) ChildFail(err_fd, ChildStep::kDupFd, static_cast<int>(i));
  }
  for (int fd = 0; fd < plan.base_fd; ++fd) {
    bool is_target = false;
    for (size_t i = 0; i < n; ++i) is_target |= plan.dst_fds[i] == fd;
    if (!is_target) ::close(fd);
  }
  // Everything else the parent had open closes at exec; err_fd with it, which
  // is how the parent learns that exec succeeded.
  syscall(SYS_close_range, plan.base_fd, ~0U, CLOSE_RANGE_CLOEXEC);

  if (plan.parent_death_signal != 0 && prctl(PR_SET_PDEATHSIG, plan.parent_death_signal) < 0) {
    ChildFail(err_fd, ChildStep::kDeathSignal);
  }
  if (plan.memory_merge && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) < 0) {
    ChildFail(err_fd, ChildStep::kMemoryMerge);
  }
  if (plan.new_session && setsid() < 0) ChildFail(err_fd, ChildStep::kSetsid);
  if (plan.netns_fd >= 0 && setns(plan.netns_fd, CLONE_NEWNET) < 0) ChildFail(err_fd, ChildStep::kSetns);
  if (plan.new_mount_namespace) {
    if (unshare(CLONE_NEWNS) < 0) ChildFail(err_fd, ChildStep::kUnshareMount);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) {
      ChildFail(err_fd, ChildStep::kPrivateMount);
    }
    for (size_t i = 0; i < plan.bind_src.size(); ++i) {
      if (mount(plan.bind_src[i], plan.bind_dst[i], nullptr, MS_BIND, nullptr) < 0) {
        ChildFail(err_fd, ChildStep::kBindMount, static_cast<int>(i));
      }
      if (plan.bind_ro[i] &&
          mount(nullptr, plan.bind_dst[i], nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) < 0) {
        ChildFail(err_fd, ChildStep::kRemount, static_cast<int>(i));
      }
    }
  }
  if (plan.cwd != nullptr && chdir(plan.cwd) < 0) ChildFail(err_fd, ChildStep::kChdir);
  execve(plan.argv[0], plan.argv.data(), plan.envp.data());
  ChildFail(err_fd, ChildStep::kExec);
}

absl::Status ReportToStatus(const ChildReport& report, const SpawnOptions& options) {
  const std::string& prog = options.argv[0];
  switch (static_cast<ChildStep>(report.step)) {
    case ChildStep::kDupFd:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": pass fd #", report.index));
    case ChildStep::kSetns:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": setns(network namespace)"));
    case ChildStep::kUnshareMount:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": unshare(mount namespace)"));
    case ChildStep::kPrivateMount:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": make / private"));
    case ChildStep::kBindMount:
    case ChildStep::kRemount: {
      const BindMount& bm = options.bind_mounts[report.index];
      return ErrnoError(report.err,
                        absl::StrCat("spawn ", prog, ": bind mount ", bm.source, " -> ", bm.target));
    }
    case ChildStep::kChdir:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": chdir ", options.cwd));
    case ChildStep::kSetsid:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": setsid"));
    case ChildStep::kDeathSignal:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": prctl(PR_SET_PDEATHSIG)"));
    case ChildStep::kMemoryMerge:
      return ErrnoError(report.err, absl::StrCat("spawn ", prog, ": prctl(PR_SET_MEMORY_MERGE)"));
    case ChildStep::kExec:
      return ErrnoError(report.err, absl::StrCat("exec ", prog));
  }
  return absl::InternalError(absl::StrCat("spawn ", prog, ": unknown child report ", report.step));
}

}  // namespace

std::string ExitStatus::ToString() const {
  if (!known) return "exited (status unknown: not our child)";
  if (signaled) return absl::StrCat("killed by signal ", value, " (", strsignal(value), ")");
  return absl::StrCat("exit code ", value);
}

absl::StatusOr<Process> Process::Spawn(const SpawnOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return absl::InvalidArgumentError("spawn: empty argv");
  }
  if (options.fds.size() > 60) return absl::InvalidArgumentError("spawn: too many fds to pass");

  UniqueFd dev_null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!dev_null) return ErrnoError("open /dev/null");

  ChildPlan plan;
  std::vector<std::string> env_storage;
  for (const std::string& arg : options.argv) plan.argv.push_back(const_cast<char*>(arg.c_str()));
  plan.argv.push_back(nullptr);
  if (options.env.has_value()) {
    for (const std::string& e : *options.env) plan.envp.push_back(const_cast<char*>(e.c_str()));
  } else {
    for (char** e = environ; *e != nullptr; ++e) plan.envp.push_back(*e);
  }
  plan.envp.push_back(nullptr);

  bool mapped[3] = {false, false, false};
  for (const auto& [src, dst] : options.fds) {
    if (src < 0 || dst < 0) return absl::InvalidArgumentError("spawn: negative fd in fd map");
    plan.src_fds.push_back(src);
    plan.dst_fds.push_back(dst);
    if (dst < 3) mapped[dst] = true;
    plan.base_fd = std::max(plan.base_fd, dst + 1);
  }
  for (int std_fd = 0; std_fd < 3; ++std_fd) {
    if (!mapped[std_fd]) {
      plan.src_fds.push_back(dev_null.get());
      plan.dst_fds.push_back(std_fd);
    }
  }
  for (const BindMount& bm : options.bind_mounts) {
    plan.bind_src.push_back(bm.source.c_str());
    plan.bind_dst.push_back(bm.target.c_str());
    plan.bind_ro.push_back(bm.read_only);
  }
  plan.netns_fd = options.netns_fd;
  plan.new_mount_namespace = options.new_mount_namespace;
  plan.cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  plan.new_session = options.new_session;
  plan.parent_death_signal = options.parent_death_signal;
  plan.memory_merge = options.memory_merge;
  if (!options.bind_mounts.empty() && !options.new_mount_namespace) {
    return absl::InvalidArgumentError("spawn: bind mounts need new_mount_namespace");
  }

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd err_read(pipe_fds[0]);
  UniqueFd err_write(pipe_fds[1]);
  plan.err_fd = err_write.get();

  // The child shares fcvmd's memory until it execs (CLONE_VM | CLONE_VFORK,
  // as posix_spawn does): a fork would copy the page tables of every mapping
  // fcvmd has (the page server maps whole snapshot files), and every page
  // fcvmd's other threads write before the exec would fault. It runs on a
  // stack of its own; this thread sleeps until the exec (or the child's exit).
  constexpr size_t kChildStack = 256 * 1024;
  void* stack =
      mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return ErrnoError("mmap spawn stack");
  sigset_t all, old_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  int pidfd = -1;
  // Except with memory_merge: PR_SET_MEMORY_MERGE marks the memory of whoever
  // calls it, which in a CLONE_VM child would be fcvmd's; that child gets its
  // own copy of fcvmd's memory (as a fork), still waited for until its exec.
  const int share_vm = options.memory_merge ? 0 : CLONE_VM;
  const int flags =
      share_vm | CLONE_VFORK | CLONE_PIDFD | (options.new_pid_namespace ? CLONE_NEWPID : 0) | SIGCHLD;
  long pid = ::clone([](void* arg) -> int { RunChild(*static_cast<const ChildPlan*>(arg)); },
                     static_cast<char*>(stack) + kChildStack, flags, &plan, &pidfd);
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
#if defined(__SANITIZE_ADDRESS__)
  // The child left its frames' poison in the shadow of this stack when it exec'd.
  __asan_unpoison_memory_region(stack, kChildStack);
#endif
  munmap(stack, kChildStack);
  if (pid < 0) {
    return ErrnoError(clone_errno, absl::StrCat("clone for ", options.argv[0],
                                                options.new_pid_namespace ? " (new PID namespace)" : ""));
  }

  Process process(static_cast<pid_t>(pid), UniqueFd(pidfd), /*is_child=*/true);
  err_write.Reset();
  ChildReport report;
  ssize_t got;
  do {
    got = ::read(err_read.get(), &report, sizeof(report));
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof(report))) {
    // The child failed before exec and exits 127: reap it now.
    (void)process.Wait();
    return ReportToStatus(report, options);
  }
  return process;
}

absl::StatusOr<Process> Process::Adopt(pid_t pid) {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("adopt: bad pid ", pid));
  int fd = PidfdOpen(pid, 0);
  if (fd < 0) return ErrnoError(absl::StrCat("pidfd_open ", pid));
  return Process(pid, UniqueFd(fd), /*is_child=*/false);
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::move(other.pidfd_)),
      is_child_(other.is_child_),
      exit_(std::exchange(other.exit_, std::nullopt)) {}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
    is_child_ = other.is_child_;
    exit_ = std::exchange(other.exit_, std::nullopt);
  }
  return *this;
}

Process::~Process() { KillAndReap(); }

void Process::KillAndReap() {
  if (pid_ <= 0 || exit_.has_value()) return;
  (void)Kill();
}

absl::Status Process::Signal(int signal) {
  if (!valid()) return absl::FailedPreconditionError("signal: no process");
  if (exit_.has_value()) return absl::OkStatus();
  if (PidfdSendSignal(pidfd_.get(), signal) < 0) {
    if (errno == ESRCH) return absl::OkStatus();  // exited, not yet reaped
    return ErrnoError(absl::StrCat("pidfd_send_signal ", pid_, " signal ", signal));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ExitStatus>> Process::TryWait() {
  if (!valid()) return absl::FailedPreconditionError("wait: no process");
  if (exit_.has_value()) return exit_;
  if (!is_child_) {
    struct pollfd pfd = {pidfd_.get(), POLLIN, 0};
    int r = poll(&pfd, 1, 0);
    if (r < 0) return ErrnoError("poll pidfd");
    if (r == 0) return std::optional<ExitStatus>();
    // If it happens to be our child after all, reap it (and learn how it
    // ended); otherwise its real parent does.
    siginfo_t info;
    std::memset(&info, 0, sizeof(info));
    if (waitid(static_cast<idtype_t>(P_PIDFD), pidfd_.get(), &info, WEXITED | WNOHANG) == 0 &&
        info.si_pid != 0) {
      exit_ = ExitStatus{info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED, info.si_status, true};
    } else {
      exit_ = ExitStatus{false, 0, false};
    }
    return exit_;
  }
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  if (waitid(static_cast<idtype_t>(P_PIDFD), pidfd_.get(), &info, WEXITED | WNOHANG) < 0) {
    return ErrnoError(absl::StrCat("waitid ", pid_));
  }
  if (info.si_pid == 0) return std::optional<ExitStatus>();
  ExitStatus status;
  status.signaled = info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
  status.value = info.si_status;
  exit_ = status;
  return exit_;
}

absl::StatusOr<ExitStatus> Process::Wait(absl::Duration timeout) {
  absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  while (true) {
    absl::StatusOr<std::optional<ExitStatus>> st = TryWait();
    if (!st.ok()) return st.status();
    if (st->has_value()) return **st;
    int wait_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(
            absl::StrCat("process ", pid_, " still running after ", absl::FormatDuration(timeout)));
      }
      wait_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    }
    struct pollfd pfd = {pidfd_.get(), POLLIN, 0};
    if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR) return ErrnoError("poll pidfd");
  }
}

absl::StatusOr<ExitStatus> Process::Kill() {
  absl::Status st = Signal(SIGKILL);
  if (!st.ok()) return st;
  return Wait();
}

pid_t Process::Release() {
  pidfd_.Reset();
  exit_.reset();
  return std::exchange(pid_, -1);
}

absl::Status MemoryMergeSupported() {
  if (prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) >= 0) return absl::OkStatus();
  if (errno == EINVAL) {
    return absl::UnimplementedError(
        "prctl(PR_GET_MEMORY_MERGE): Invalid argument: this kernel has no per-process KSM merging (Linux "
        "6.4+ "
        "with CONFIG_KSM)");
  }
  return ErrnoError("prctl(PR_GET_MEMORY_MERGE)");
}

absl::StatusOr<std::string> RunAndCapture(const std::vector<std::string>& argv, absl::Duration timeout) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  SpawnOptions options;
  options.argv = argv;
  options.fds = {{write_end.get(), 1}, {write_end.get(), 2}};
  ASSIGN_OR_RETURN(Process process, Process::Spawn(options));
  write_end.Reset();
  absl::Time deadline = absl::Now() + timeout;
  std::string out;
  char buf[4096];
  while (true) {
    int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (wait_ms <= 0) {
      (void)process.Kill();
      return absl::DeadlineExceededError(
          absl::StrCat(argv[0], " did not finish within ", absl::FormatDuration(timeout)));
    }
    struct pollfd pfd = {read_end.get(), POLLIN, 0};
    int r = poll(&pfd, 1, wait_ms);
    if (r < 0 && errno != EINTR) return ErrnoError("poll");
    if (r <= 0) continue;
    ssize_t n = ::read(read_end.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ASSIGN_OR_RETURN(ExitStatus status, process.Wait(std::max(deadline - absl::Now(), absl::Milliseconds(1))));
  if (!status.success()) {
    return absl::FailedPreconditionError(absl::StrCat(argv[0], " failed (", status.ToString(), "): ", out));
  }
  return out;
}

}  // namespace fcvm
