#pragma once

// Shared pieces of the Firecracker end-to-end tests and the fc_bench program:
// prerequisites (FCVM_FIRECRACKER_BIN, /dev/kvm, the test guest), reading the
// test guest's console, a minimal Uffd page server, and leftover checks.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "lib/base/unique_fd.h"
#include "lib/firecracker/console.h"
#include "lib/firecracker/vmm.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::e2e {

// Path of the Firecracker binary (env FCVM_FIRECRACKER_BIN) and of the test
// guest ELF (env FCVM_TEST_GUEST, else the path compiled in).
std::string FirecrackerPath();
std::string GuestPath();

// Empty when the e2e tests can run; otherwise why not (for GTEST_SKIP).
std::string MissingPrerequisite();

// The jailer (env FCVM_JAILER_BIN, else "jailer" beside the Firecracker
// binary), and why the jailed tests cannot run ("" when they can): the
// e2e prerequisites, the jailer, and root.
std::string JailerPath();
std::string MissingJailPrerequisite();
// fcvmd's jail flags for the tests: {"--jailer", JailerPath()} where the
// jailed tests can run, else {"--no-jailer"} (printed once, with the reason),
// so that the fcvmd tests run jailed wherever a jailer is present.
std::vector<std::string> FcvmdJailArgs();

// Starts the fcvmd at `binary` (a test's FCVMD_PATH) for an e2e test: socket
// <dir>/fcvmd.sock, state <dir>/state, stderr appended to <dir>/fcvmd.log,
// the configured Firecracker, FcvmdJailArgs(), then `args`. Returns once the
// socket accepts connections (30 s at most). An fcvmd that exits first is
// Unavailable, with its exit status and its log.
absl::StatusOr<Process> StartFcvmd(const std::string& binary, const std::string& dir,
                                   const std::vector<std::string>& args = {});

// The tests' one temporary-directory helper (tests/testing/temp_dir.h).
using ::fcvm::testing::TempDir;

// The boot arguments the tests use: small test areas so that 8 clones fit on
// two CPUs.
inline constexpr char kGuestBootArgs[] = "console=ttyS0 fcvm.read_mib=8 fcvm.write_mib=2 fcvm.tick_ms=250";
inline constexpr int kGuestMemMib = 128;

firecracker::BootSpec GuestBootSpec(const std::string& guest);

struct Tick {
  uint64_t number = 0;
  bool ok = false;
  std::string line;
};

// Waits for the guest's READY line from console line `from_line` on; returns
// its line number.
absl::StatusOr<uint64_t> WaitForReady(const firecracker::ConsoleCapture& console, uint64_t from_line,
                                      absl::Duration timeout);

// Waits for `count` tick lines after line `from_line`, all OK, with increasing
// numbers greater than `after_tick`. Returns the last tick. A BAD tick is an
// error quoting it.
absl::StatusOr<Tick> WaitForOkTicks(const firecracker::ConsoleCapture& console, uint64_t from_line, int count,
                                    uint64_t after_tick, absl::Duration timeout);

// The number of the last tick line printed so far, 0 if none.
uint64_t LastTick(const firecracker::ConsoleCapture& console);

// The simplest correct Uffd page server for one Firecracker: accepts one
// connection on `socket_path`, receives the region list and the uffd, and
// resolves every page fault with UFFDIO_COPY from `mem_file` (zero pages in
// ranges the guest removed). Runs on its own thread until Firecracker hangs
// up or the server is destroyed. The real page server is lib/uffd.
class UffdTestServer {
 public:
  struct Options {
    // Called on the server thread once the handshake arrived.
    std::function<void()> on_handshake;
    // False: take the handshake but never serve a fault (the VM freezes).
    bool serve = true;
  };
  static absl::StatusOr<std::unique_ptr<UffdTestServer>> Start(std::string socket_path, std::string mem_file,
                                                               Options options);
  static absl::StatusOr<std::unique_ptr<UffdTestServer>> Start(std::string socket_path,
                                                               std::string mem_file) {
    return Start(std::move(socket_path), std::move(mem_file), Options());
  }
  ~UffdTestServer();

  const std::string& socket_path() const { return socket_path_; }
  uint64_t faults_served() const { return faults_.load(); }
  bool handshake_done() const { return handshake_.load(); }
  // The error that stopped the server, OK if none (yet).
  absl::Status error() const;

 private:
  UffdTestServer() = default;
  void Run();
  absl::Status Serve();

  std::string socket_path_;
  std::string mem_file_;
  Options options_;
  UniqueFd listen_;
  UniqueFd stop_;
  std::thread thread_;
  std::atomic<uint64_t> faults_{0};
  std::atomic<bool> handshake_{false};
  mutable std::atomic<bool> failed_{false};
  std::string error_message_;  // written by the thread before failed_ is set
};

// What a test left behind: child processes of this process (zombies too),
// any other process whose command line names a path under `dir` (a
// Firecracker left running) or whose root directory is under it (a jailed one), socket files under `dir`,
// mounts that mention `dir`, network namespaces whose name starts with `netns_prefix` (when not empty).
std::vector<std::string> Leftovers(const std::string& dir, const std::string& netns_prefix = "");

// True when `pid` runs chrooted in a jail under `dir` (<dir>/jail/firecracker/
// <id>/root or <dir>/<sub>/jail/firecracker/<id>/root).
bool IsJailedUnder(pid_t pid, const std::string& dir);

double MedianMs(std::vector<absl::Duration> v);

// ---- looking at a (jailed) process from the host ----

// /proc/<pid>/status (or a task's) as key -> value.
std::map<std::string, std::string> ReadStatus(const std::string& path);
// The target of a symlink, "" when it is not one.
std::string ReadLink(const std::string& path);
// Every path below `dir`, relative ("dev/kvm"), without following links.
void ListTree(const std::string& dir, const std::string& rel, std::set<std::string>* out);
// What a process running as uid:gid gets when it opens `file` for reading
// and connects to `socket`: the two errnos (0 = success). A forked child
// doing only system calls, so it is safe in a multi-threaded test.
std::pair<int, int> TryAs(uint32_t uid, uint32_t gid, const std::string& file, const std::string& socket);

}  // namespace fcvm::e2e
