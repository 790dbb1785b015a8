#include "lib/base/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

// When re-executed with FCVM_TEST_LIST_FDS set, this test binary prints the
// fds it holds (besides the one opendir uses) and exits before GoogleTest runs:
// the only honest way to see what a spawned child inherited.
const bool kListFdsMode = [] {
  if (std::getenv("FCVM_TEST_LIST_FDS") == nullptr) return false;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) _exit(2);
  std::string out;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd == dirfd(dir)) continue;
    out += std::to_string(fd) + "\n";
  }
  closedir(dir);
  if (write(1, out.data(), out.size()) < 0) _exit(3);
  _exit(0);
}();

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

TEST(Process, ExitCodes) {
  ASSERT_OK_AND_ASSIGN(Process ok, Process::Spawn({.argv = {"/bin/true"}}));
  ASSERT_OK_AND_ASSIGN(ExitStatus s1, ok.Wait());
  EXPECT_TRUE(s1.success());
  ASSERT_OK_AND_ASSIGN(Process bad, Process::Spawn({.argv = {"/bin/sh", "-c", "exit 7"}}));
  ASSERT_OK_AND_ASSIGN(ExitStatus s2, bad.Wait());
  EXPECT_FALSE(s2.signaled);
  EXPECT_EQ(s2.value, 7);
  EXPECT_EQ(s2.ToString(), "exit code 7");
}

// The child shares our memory until its exec (vfork-like): spawning from
// several threads at once, while another thread keeps allocating and writing,
// must give every child its own argv and exit status and leave us intact.
TEST(Process, ManyThreadsSpawnAtOnceWhileMemoryChanges) {
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load()) {
      std::vector<std::string> v(64, std::string(1000, 'x'));
      for (std::string& str : v) str[7] = 'y';
    }
  });
  constexpr int kThreads = 4, kEach = 30;
  std::vector<std::vector<int>> codes(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        int want = (t * kEach + i) % 200;
        absl::StatusOr<Process> p = Process::Spawn({.argv = {"/bin/sh", "-c", absl::StrCat("exit ", want)}});
        if (!p.ok()) {
          codes[t].push_back(-1);
          continue;
        }
        absl::StatusOr<ExitStatus> st = p->Wait();
        codes[t].push_back(st.ok() && !st->signaled ? st->value - want : -2);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  stop = true;
  churn.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(codes[t].size(), static_cast<size_t>(kEach));
    for (int c : codes[t]) EXPECT_EQ(c, 0) << "thread " << t;
  }
}

// fcvmd blocks SIGTERM and ignores SIGPIPE; its children start with neither.
TEST(Process, ChildStartsWithDefaultSignalState) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &old), 0);
  struct sigaction ign = {}, old_pipe = {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGPIPE, &ign, &old_pipe), 0);
  absl::StatusOr<Process> p = Process::Spawn({.argv = {"/bin/sleep", "60"}});
  // Ours is as it was: the child's resets did not touch our handlers or mask.
  struct sigaction now = {};
  sigset_t mask;
  EXPECT_EQ(sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  EXPECT_EQ(pthread_sigmask(SIG_SETMASK, &old, &mask), 0);
  EXPECT_EQ(sigismember(&mask, SIGTERM), 1);
  sigaction(SIGPIPE, &old_pipe, nullptr);
  ASSERT_OK(p.status());
  ASSERT_OK_AND_ASSIGN(std::string status, ReadFile(absl::StrCat("/proc/", p->pid(), "/status")));
  EXPECT_THAT(status, HasSubstr("SigBlk:\t0000000000000000"));
  EXPECT_THAT(status, HasSubstr("SigIgn:\t0000000000000000"));
}

TEST(Process, MissingBinaryIsAnErrorFromExec) {
  auto p = Process::Spawn({.argv = {"/nonexistent/fcvm-binary"}});
  EXPECT_THAT(p, StatusIs(absl::StatusCode::kNotFound, HasSubstr("exec /nonexistent/fcvm-binary")));
}

TEST(Process, EmptyArgvIsInvalid) {
  EXPECT_THAT(Process::Spawn({}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Process, BadCwdReported) {
  auto p = Process::Spawn({.argv = {"/bin/true"}, .cwd = "/nonexistent-dir"});
  EXPECT_THAT(p, StatusIs(absl::StatusCode::kNotFound, HasSubstr("chdir /nonexistent-dir")));
}

TEST(Process, KillReportsSignal) {
  ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn({.argv = {"/bin/sleep", "60"}}));
  ASSERT_OK_AND_ASSIGN(auto running, p.TryWait());
  EXPECT_FALSE(running.has_value());
  EXPECT_THAT(p.Wait(absl::Milliseconds(50)), StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Kill());
  EXPECT_TRUE(st.signaled);
  EXPECT_EQ(st.value, SIGKILL);
}

TEST(Process, DestructorKillsAndReaps) {
  pid_t pid;
  {
    ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn({.argv = {"/bin/sleep", "60"}}));
    pid = p.pid();
    ASSERT_EQ(kill(pid, 0), 0);
  }
  // Reaped, so the pid no longer exists (not even as a zombie).
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(Process, ReleaseLeavesProcessRunningAndAdoptFindsIt) {
  ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn({.argv = {"/bin/sleep", "60"}}));
  pid_t pid = p.Release();
  EXPECT_FALSE(p.valid());
  ASSERT_EQ(kill(pid, 0), 0);
  ASSERT_OK_AND_ASSIGN(Process adopted, Process::Adopt(pid));
  ASSERT_OK(adopted.Signal(SIGKILL));
  // We are still its real parent here, so the adopted handle reaps it and
  // learns how it ended.
  ASSERT_OK_AND_ASSIGN(ExitStatus st, adopted.Wait(absl::Seconds(10)));
  EXPECT_TRUE(st.known);
  EXPECT_TRUE(st.signaled);
  EXPECT_EQ(st.value, SIGKILL);
  EXPECT_EQ(kill(pid, 0), -1) << "not reaped";
}

TEST(Process, NewPidNamespace) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (CLONE_NEWPID)";
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  // The child prints its pid as it sees it, then waits to be killed.
  absl::StatusOr<Process> child = Process::Spawn(
      {.argv = {"/bin/sh", "-c", "echo $$; exec sleep 60"}, .fds = {{p[1], 1}}, .new_pid_namespace = true});
  close(p[1]);
  ASSERT_OK(child.status());
  char buf[32] = {};
  ssize_t n = read(p[0], buf, sizeof(buf) - 1);
  close(p[0]);
  EXPECT_EQ(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0), "1\n");
  char ns_child[64] = {}, ns_self[64] = {};
  ASSERT_GT(readlink(("/proc/" + std::to_string(child->pid()) + "/ns/pid").c_str(), ns_child, 63), 0);
  ASSERT_GT(readlink("/proc/self/ns/pid", ns_self, 63), 0);
  EXPECT_STRNE(ns_child, ns_self);
  // PID 1 of its namespace ignores SIGTERM from us; SIGKILL works, and as our
  // own child its exit status is known.
  ASSERT_OK(child->Signal(SIGTERM));
  EXPECT_THAT(child->Wait(absl::Milliseconds(200)), StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, child->Kill());
  EXPECT_TRUE(st.known);
  EXPECT_TRUE(st.signaled);
  EXPECT_EQ(st.value, SIGKILL);
}

TEST(Process, AdoptMissingPidIsNotFound) {
  EXPECT_THAT(Process::Adopt(0x3ffffff0), StatusIs(absl::StatusCode::kNotFound));
}

TEST(Process, ChildInheritsOnlyListedFds) {
  // A descriptor deliberately opened WITHOUT close-on-exec: a naive fork+exec
  // would leak it.
  int leaky = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  int passed = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(passed, 0);
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);

  SpawnOptions opts;
  opts.argv = {SelfExe()};
  opts.env = std::vector<std::string>{"FCVM_TEST_LIST_FDS=1"};
  opts.fds = {{out[1], 1}, {passed, 5}};
  ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn(opts));
  close(out[1]);
  std::string listing = ReadAll(out[0]);
  close(out[0]);
  ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait());
  EXPECT_TRUE(st.success()) << st.ToString();

  std::set<int> fds;
  for (absl::string_view line : absl::StrSplit(listing, '\n', absl::SkipEmpty())) {
    int fd;
    ASSERT_TRUE(absl::SimpleAtoi(line, &fd)) << line;
    fds.insert(fd);
  }
  EXPECT_EQ(fds, (std::set<int>{0, 1, 2, 5})) << listing;
  close(leaky);
  close(passed);
}

TEST(Process, FdMapMaySwapDescriptors) {
  // Map a -> b and b -> a: sources must survive being targets.
  int p1[2], p2[2];
  ASSERT_EQ(pipe2(p1, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(p2, O_CLOEXEC), 0);
  SpawnOptions opts;
  opts.argv = {"/bin/sh", "-c", "echo one >&3; echo two >&4"};
  // child fd 3 -> p2 write end, child fd 4 -> p1 write end
  opts.fds = {{p2[1], 3}, {p1[1], 4}};
  ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn(opts));
  close(p1[1]);
  close(p2[1]);
  EXPECT_EQ(ReadAll(p2[0]), "one\n");
  EXPECT_EQ(ReadAll(p1[0]), "two\n");
  close(p1[0]);
  close(p2[0]);
  ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait());
  EXPECT_TRUE(st.success());
}

TEST(Process, PrivateMountNamespaceBindMount) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for mount namespaces";
  char src[] = "/tmp/fcvm-proc-src-XXXXXX";
  char dst[] = "/tmp/fcvm-proc-dst-XXXXXX";
  ASSERT_NE(mkdtemp(src), nullptr);
  ASSERT_NE(mkdtemp(dst), nullptr);
  std::string marker = std::string(src) + "/marker";
  FILE* f = fopen(marker.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("bound\n", f);
  fclose(f);

  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  SpawnOptions opts;
  opts.argv = {"/bin/cat", std::string(dst) + "/marker"};
  opts.fds = {{out[1], 1}};
  opts.new_mount_namespace = true;
  opts.bind_mounts = {{src, dst, true}};
  ASSERT_OK_AND_ASSIGN(Process p, Process::Spawn(opts));
  close(out[1]);
  EXPECT_EQ(ReadAll(out[0]), "bound\n");
  close(out[0]);
  ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait());
  EXPECT_TRUE(st.success());
  // The mount stayed inside the child's namespace.
  EXPECT_NE(access((std::string(dst) + "/marker").c_str(), F_OK), 0);
  unlink(marker.c_str());
  rmdir(src);
  rmdir(dst);
}

}  // namespace
}  // namespace fcvm

namespace fcvm {
namespace {

TEST(RunAndCapture, ReturnsOutputAndErrors) {
  ASSERT_OK_AND_ASSIGN(std::string out, RunAndCapture({"/bin/echo", "hello"}));
  EXPECT_EQ(out, "hello\n");
  EXPECT_THAT(RunAndCapture({"/bin/sh", "-c", "echo oops >&2; exit 3"}),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::HasSubstr("exit code 3")));
  EXPECT_THAT(RunAndCapture({"/bin/sleep", "10"}, absl::Milliseconds(100)),
              testing::StatusIs(absl::StatusCode::kDeadlineExceeded));
}

}  // namespace
}  // namespace fcvm
