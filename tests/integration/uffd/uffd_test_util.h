#pragma once

// Helpers shared by the page-server integration tests: a temp directory,
// memory files with a known pattern (about half the pages zero), the fake
// VMM, and an event collector.

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "lib/uffd/page_server.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::uffd::testing {

// The shared temporary directory (tests/testing/temp_dir.h), with File().
class TempDir : public ::fcvm::testing::TempDir {
 public:
  TempDir() : ::fcvm::testing::TempDir("fcvm-uffd-test") {}
  std::string File(const std::string& name) const { return Sub(name); }
};

// Why this host cannot run the page-server tests (no userfaultfd, no
// io_uring), or "" when it can. A global test environment skips the whole
// suite, printing it, when it is not empty.
std::string MissingKernelFeature();

// Page p is zero when ZeroPage(p, seed); other pages hold bytes derived from
// (seed, p, offset). With `group` > 1 (pages per huge page), whole groups of
// pages are zero (ZeroPage(p / group, seed)) and, inside the other groups,
// about one page in six: such a group is never all zero.
bool ZeroPage(uint64_t page, uint32_t seed, uint64_t group = 1);
void WriteMemFile(const std::string& path, uint64_t size, uint32_t seed, uint64_t group = 1);
uint64_t CountZeroPages(uint64_t pages, uint32_t seed, uint64_t first = 0, uint64_t group = 1);

// Spawns the fake VMM with `args` (plus --socket/--memfile). stderr goes to
// the test's stderr.
Process SpawnFake(const std::string& socket, const std::string& memfile, std::vector<std::string> args);

// Waits for a child; fails the test if it does not end within `timeout`.
ExitStatus WaitChild(Process& p, absl::Duration timeout = absl::Seconds(60));

class EventLog {
 public:
  std::function<void(const SessionEvent&)> Callback();
  // Waits for an event matching `pred`; returns it, or nullopt on timeout.
  std::optional<SessionEvent> WaitFor(std::function<bool(const SessionEvent&)> pred,
                                      absl::Duration timeout = absl::Seconds(20));
  std::vector<SessionEvent> All();

 private:
  absl::Mutex mu_;
  std::vector<SessionEvent> events_ ABSL_GUARDED_BY(mu_);
};

// A userfaultfd of this process (for handshake tests). -1 on failure.
int MakeUserfaultfd();

bool WaitForFile(const std::string& path, absl::Duration timeout);

}  // namespace fcvm::uffd::testing
