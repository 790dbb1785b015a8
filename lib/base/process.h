#pragma once

// Child processes held by a pidfd.
//
// Process::Spawn starts a program with exactly the fds it is told to pass (all
// others are closed or close-on-exec in the child), optionally inside a network
// namespace, a private mount namespace with bind mounts and a new PID
// namespace, and returns an owner
// that signals, waits for and reaps it through its pidfd. An owner that is
// destroyed while its child still runs kills it (SIGKILL) and reaps it, so a
// failed setup never leaves a process behind. Release() hands the process over
// to whoever outlives the owner (fcvmd's state directory, for re-adoption after
// a daemon restart).
//
// Thread-safety: one Process is used by one thread at a time; Spawn itself may
// be called from any thread of a multi-threaded program (the child runs only
// async-signal-safe system calls between clone and exec). The child shares the
// caller's memory until its exec, as with vfork (no copy of the caller's page
// tables), and the calling thread waits for that exec.

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"

namespace fcvm {

struct BindMount {
  std::string source;
  std::string target;
  bool read_only = false;
};

struct SpawnOptions {
  // argv[0] is the program's path (no PATH search: fcvm always knows where its
  // binaries are).
  std::vector<std::string> argv;
  // The child's whole environment; nullopt means a copy of the parent's.
  std::optional<std::vector<std::string>> env;
  // {parent fd, child fd}: the only descriptors the child receives. fds 0, 1
  // and 2 are /dev/null unless mapped here.
  std::vector<std::pair<int, int>> fds;
  // Working directory of the child; empty keeps the parent's.
  std::string cwd;
  // When >= 0, the child joins this network namespace (setns) before exec.
  int netns_fd = -1;
  // When true, the child gets a private mount namespace (propagation made
  // private so nothing leaks to the host) and `bind_mounts` are applied in
  // order before exec.
  bool new_mount_namespace = false;
  std::vector<BindMount> bind_mounts;
  // When true, the child is created in a new PID namespace (clone with
  // CLONE_NEWPID, needs CAP_SYS_ADMIN), where it is PID 1: it stays our child,
  // held by the pidfd clone returned, and pid() is its pid in our namespace.
  // As PID 1 it gets no signal from us for which it has no handler, except
  // SIGKILL and SIGSTOP: SIGTERM does not stop it. When it exits, the kernel
  // kills everything else in its namespace.
  bool new_pid_namespace = false;
  // Start a new session, so a terminal's signals (Ctrl-C on fcvmd run by hand)
  // go to the daemon only, which then decides what happens to its VMs.
  bool new_session = true;
  // Signal sent to the child when the spawning thread exits (PR_SET_PDEATHSIG);
  // 0 = none. fcvmd leaves it at 0 so that VMs survive a daemon restart.
  int parent_death_signal = 0;
  // Makes every anonymous mapping of the new program mergeable by KSM
  // (prctl PR_SET_MEMORY_MERGE, set in the child just before exec; the setting
  // survives execve and is inherited by the program's own children). Linux
  // 6.4 or later: on older kernels Spawn fails ("prctl(PR_SET_MEMORY_MERGE):
  // Invalid argument"); MemoryMergeSupported() tells beforehand.
  bool memory_merge = false;
};

struct ExitStatus {
  bool signaled = false;  // true: `value` is the signal number, else the exit code
  int value = 0;
  // False for an adopted process, whose status only its real parent sees.
  bool known = true;

  bool success() const { return known && !signaled && value == 0; }
  std::string ToString() const;  // "exit code 1", "killed by signal 9 (Killed)"
};

class Process {
 public:
  // Starts a child. Errors: InvalidArgument for empty argv; the errno-derived
  // status of the step that failed in the child ("exec /x: No such file or
  // directory", "setns: Operation not permitted", "bind mount a -> b: ...").
  static absl::StatusOr<Process> Spawn(const SpawnOptions& options);

  // Takes hold of a running process that is not our child (for instance one a
  // previous fcvmd started). It can be signalled and watched; its exit status
  // is known only if it is our child after all (then it is reaped here),
  // otherwise its parent reaps it. NotFound when it does not exist.
  static absl::StatusOr<Process> Adopt(pid_t pid);

  Process() = default;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // Kills (SIGKILL) and reaps the process if it has not been waited for.
  ~Process();

  bool valid() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // Readable (POLLIN) once the process has exited: fcvm's event loops watch it.
  int pidfd() const { return pidfd_.get(); }
  bool exited() const { return exit_.has_value(); }

  // Sends `signal` through the pidfd (no pid-reuse race). Succeeds if the
  // process already exited but was not yet reaped.
  absl::Status Signal(int signal);

  // Returns the exit status if the process has exited, nullopt if it runs.
  absl::StatusOr<std::optional<ExitStatus>> TryWait();

  // Waits up to `timeout` (infinite by default). DeadlineExceeded when it is
  // still running then.
  absl::StatusOr<ExitStatus> Wait(absl::Duration timeout = absl::InfiniteDuration());

  // SIGKILL, then wait. Returns the exit status.
  absl::StatusOr<ExitStatus> Kill();

  // Stops owning the process without killing it; returns its pid.
  pid_t Release();

 private:
  Process(pid_t pid, UniqueFd pidfd, bool is_child)
      : pid_(pid), pidfd_(std::move(pidfd)), is_child_(is_child) {}
  void KillAndReap();

  pid_t pid_ = -1;
  UniqueFd pidfd_;
  bool is_child_ = false;
  std::optional<ExitStatus> exit_;
};

// OK when this kernel has per-process KSM merging (PR_SET_MEMORY_MERGE, Linux
// 6.4+); otherwise the prctl's error (Unimplemented naming the kernel feature
// for EINVAL).
absl::Status MemoryMergeSupported();

// Runs `argv` to completion and returns what it wrote to stdout (stderr is
// appended after it). Killed and DeadlineExceeded after `timeout`;
// FailedPrecondition naming the exit status when it does not exit 0.
absl::StatusOr<std::string> RunAndCapture(const std::vector<std::string>& argv,
                                          absl::Duration timeout = absl::Seconds(30));

}  // namespace fcvm
