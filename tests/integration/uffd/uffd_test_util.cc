#include "tests/integration/uffd/uffd_test_util.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <liburing.h>

#include <cstring>
#include <filesystem>
#include <optional>

#include "gtest/gtest.h"

#ifndef FCVM_FAKE_VMM_PATH
#error "FCVM_FAKE_VMM_PATH must be defined"
#endif

namespace fcvm::uffd::testing {

std::string MissingKernelFeature() {
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) {
    int err = errno;
    // Unprivileged users may still have /dev/userfaultfd.
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return std::string("userfaultfd is not available: ") + std::strerror(err);
    close(dev);
  } else {
    close(uffd);
  }
  io_uring ring;
  int rc = io_uring_queue_init(8, &ring, 0);
  if (rc < 0) return std::string("io_uring is not available: ") + std::strerror(-rc);
  io_uring_queue_exit(&ring);
  return "";
}

namespace {

// Skips every test of the binary, saying why, where the kernel lacks what
// the page server needs.
class KernelFeatures : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string missing = MissingKernelFeature();
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
};

::testing::Environment* const kKernelFeatures = ::testing::AddGlobalTestEnvironment(new KernelFeatures);

}  // namespace

namespace {
bool HashBit(uint64_t x, uint32_t seed) {
  uint64_t h = (x + seed) * 0x9E3779B97F4A7C15ull;
  return ((h >> 29) & 1) == 0;
}
// splitmix64: well mixed even for small consecutive inputs (group numbers).
bool MixBit(uint64_t x, uint32_t seed) {
  uint64_t z = x + seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return ((z ^ (z >> 31)) & 1) == 0;
}
}  // namespace

bool ZeroPage(uint64_t page, uint32_t seed, uint64_t group) {
  if (group <= 1) return HashBit(page, seed);
  return MixBit(page / group, seed) || (page % 3 == 0 && HashBit(page, seed ^ 0x5555));
}

void WriteMemFile(const std::string& path, uint64_t size, uint32_t seed, uint64_t group) {
  const uint64_t ps = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << strerror(errno);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < size; off += buf.size()) {
    uint64_t n = std::min<uint64_t>(buf.size(), size - off);
    for (uint64_t po = 0; po < n; po += ps) {
      uint64_t page = (off + po) / ps;
      uint8_t* p = buf.data() + po;
      if (ZeroPage(page, seed, group)) {
        memset(p, 0, ps);
      } else {
        uint64_t x = page * 2654435761ull + seed;
        for (uint64_t i = 0; i < ps; i += 8) {
          x = x * 6364136223846793005ull + 1442695040888963407ull;
          uint64_t v = x | 1;  // never an all-zero page
          memcpy(p + i, &v, 8);
        }
      }
    }
    ASSERT_EQ(pwrite(fd, buf.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
  }
  close(fd);
}

uint64_t CountZeroPages(uint64_t pages, uint32_t seed, uint64_t first, uint64_t group) {
  uint64_t n = 0;
  for (uint64_t p = first; p < first + pages; ++p) n += ZeroPage(p, seed, group) ? 1 : 0;
  return n;
}

Process SpawnFake(const std::string& socket, const std::string& memfile, std::vector<std::string> args) {
  SpawnOptions o;
  o.argv = {FCVM_FAKE_VMM_PATH, "--socket=" + socket, "--memfile=" + memfile};
  for (auto& a : args) o.argv.push_back(std::move(a));
  o.fds = {{2, 2}};
  auto p = Process::Spawn(o);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return Process();
  return std::move(*p);
}

ExitStatus WaitChild(Process& p, absl::Duration timeout) {
  auto st = p.Wait(timeout);
  if (!st.ok()) {
    ADD_FAILURE() << "child " << p.pid() << ": " << st.status();
    auto k = p.Kill();
    return k.ok() ? *k : ExitStatus{true, 9};
  }
  return *st;
}

std::function<void(const SessionEvent&)> EventLog::Callback() {
  return [this](const SessionEvent& e) {
    absl::MutexLock lock(&mu_);
    events_.push_back(e);
  };
}

std::optional<SessionEvent> EventLog::WaitFor(std::function<bool(const SessionEvent&)> pred,
                                              absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  size_t checked = 0;
  while (true) {
    for (; checked < events_.size(); ++checked) {
      if (pred(events_[checked])) return events_[checked];
    }
    if (absl::Now() >= deadline) return std::nullopt;
    struct Arg {
      std::vector<SessionEvent>* events;
      size_t n;
    } arg{&events_, events_.size()};
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](Arg* a) { return a->events->size() > a->n; }, &arg),
                          deadline);
  }
}

std::vector<SessionEvent> EventLog::All() {
  absl::MutexLock lock(&mu_);
  return events_;
}

int MakeUserfaultfd() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_REMOVE;
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool WaitForFile(const std::string& path, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  struct stat st;
  while (stat(path.c_str(), &st) != 0) {
    if (absl::Now() > deadline) return false;
    usleep(1000);
  }
  return true;
}

}  // namespace fcvm::uffd::testing
