// Launch, probe and supervision without a real Firecracker: fake "firecracker"
// shell scripts stand in for missing, too-old, hanging and crashing binaries,
// and this test binary itself plays a Firecracker that serves a tiny API.

#include "lib/firecracker/vmm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/unix_socket.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/firecracker/fake_http.h"

namespace fcvm::firecracker {
namespace {

// This test binary doubles as a fake Firecracker: run with "--version" it
// prints a version, run with "--api-sock <path>" (as Vmm::Launch runs
// Firecracker) it records the fds it was given, prints a console line and
// serves a tiny API: GET / answers, PUT /crash exits with code 3 without
// answering. This runs before main(), so GoogleTest never starts in the fake.
[[noreturn]] void RunFakeFirecracker(const std::vector<std::string>& args) {
  std::string sock, id = "anonymous-instance";
  for (size_t i = 1; i + 1 < args.size(); ++i) {
    if (args[i] == "--api-sock") sock = args[i + 1];
    if (args[i] == "--id") id = args[i + 1];
  }
  std::string dir = sock.substr(0, sock.rfind('/'));
  // The fds this process got, before it opens any of its own.
  std::string fds;
  for (int fd = 0; fd < 1024; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) absl::StrAppend(&fds, fd, "\n");
  }
  std::ofstream(dir + "/fake.fds") << fds;
  std::string hello = "FAKE CONSOLE hello\n";
  if (write(1, hello.data(), hello.size()) < 0) _exit(2);
  absl::StatusOr<UniqueFd> listen = ListenUnix(sock);
  if (!listen.ok()) _exit(4);
  testing::ServeHttp(listen->get(), -1, [&](const testing::HttpRequest& r) -> testing::HttpReply {
    if (r.method == "GET" && r.path == "/") {
      // The id "oldapi" plays a binary swapped for an old one after the probe.
      std::string version = id == "oldapi" ? "1.7.0" : "1.14.2";
      return {200, absl::StrCat(R"({"id":")", id, R"(","state":"Not started","vmm_version":")", version,
                                R"(",)", R"("app_name":"Firecracker"})")};
    }
    if (r.path == "/crash") {
      std::string bye = "FAKE CONSOLE dying\n";
      if (write(1, bye.data(), bye.size()) < 0 || write(2, "fake: crashing on request\n", 26) < 0) _exit(5);
      _exit(3);
    }
    return {400, R"({"fault_message":"fake firecracker: not implemented"})"};
  });
  _exit(0);
}

const bool kFakeFirecrackerMode = [] {
  std::string all;
  {
    std::ifstream in("/proc/self/cmdline");  // closed before the fake lists its fds
    all.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::vector<std::string> args = absl::StrSplit(all, '\0', absl::SkipEmpty());
  if (args.size() == 2 && args[1] == "--version") {
    std::string v = "Firecracker v1.14.2\n";
    _exit(write(1, v.data(), v.size()) < 0 ? 1 : 0);
  }
  for (const std::string& a : args) {
    if (a == "--api-sock") RunFakeFirecracker(args);
  }
  return false;
}();

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

class VmmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/fc-vmm-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = absl::StrCat("rm -rf '", dir_, "'");
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }

  std::string Script(const std::string& name, const std::string& body, mode_t mode = 0755) {
    std::string path = absl::StrCat(dir_, "/", name);
    // Every run records its pid, so that the test can check none survives.
    std::ofstream(path) << "#!/bin/sh\necho $$ >> " << dir_ << "/pids\n" << body << "\n";
    EXPECT_EQ(chmod(path.c_str(), mode), 0);
    return path;
  }

  // A fake binary that passes the version check and then runs `launch_body`.
  std::string FakeFirecracker(const std::string& launch_body) {
    return Script("firecracker",
                  absl::StrCat("if [ \"$1\" = --version ]; then echo 'Firecracker v1.14.2'; exit 0; fi\n",
                               launch_body));
  }

  // Every fake that ran is gone (killed and reaped: not even a zombie).
  void ExpectNoProcessLeft() {
    std::ifstream in(dir_ + "/pids");
    int pid;
    int count = 0;
    while (in >> pid) {
      ++count;
      errno = 0;
      EXPECT_EQ(kill(pid, 0), -1) << "fake firecracker " << pid << " is still there";
      EXPECT_EQ(errno, ESRCH);
    }
    EXPECT_GT(count, 0);
  }

  std::string dir_;
};

TEST_F(VmmTest, ProbeMissingBinary) {
  EXPECT_THAT(FirecrackerBinary::Probe(dir_ + "/nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir_ + "/nope")));
  EXPECT_THAT(FirecrackerBinary::Probe(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(VmmTest, ProbeNotExecutable) {
  std::string path = Script("firecracker", "echo 'Firecracker v1.14.2'", 0644);
  EXPECT_THAT(FirecrackerBinary::Probe(path), StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr(path)));
  EXPECT_THAT(FirecrackerBinary::Probe(dir_), StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(VmmTest, ProbeRefusesOldVersion) {
  std::string path = Script("firecracker", "echo 'Firecracker v1.7.0'; echo; echo '2024 [x:main] exiting'");
  EXPECT_THAT(FirecrackerBinary::Probe(path),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr(path), HasSubstr("1.7.0"), HasSubstr("1.12.0"))));
}

TEST_F(VmmTest, ProbeAcceptsSupportedVersion) {
  std::string path = Script("firecracker", "echo 'Firecracker v1.12.1'");
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(path));
  EXPECT_EQ(bin.version(), (Version{1, 12, 1, ""}));
  EXPECT_EQ(bin.path(), path);
}

TEST_F(VmmTest, ProbeGarbageAndFailure) {
  std::string garbage = Script("garbage", "echo 'hello world'");
  EXPECT_THAT(FirecrackerBinary::Probe(garbage),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("hello world")));
  std::string failing = Script("failing", "echo 'bad flag' >&2; exit 3");
  EXPECT_THAT(FirecrackerBinary::Probe(failing),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("exit code 3"), HasSubstr("bad flag"))));
}

TEST_F(VmmTest, ProbeHangingBinaryTimesOut) {
  std::string path = Script("firecracker", "exec sleep 60");
  EXPECT_THAT(FirecrackerBinary::Probe(path, absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  ExpectNoProcessLeft();
}

TEST_F(VmmTest, EarlyExitIsReportedWithItsOutput) {
  std::string path =
      FakeFirecracker("echo 'serial says bye'\necho 'Failed to open the API socket' >&2\nexit 1");
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(path));
  absl::StatusOr<std::unique_ptr<Vmm>> vmm = Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "early"});
  EXPECT_THAT(vmm, StatusIs(absl::StatusCode::kUnavailable,
                            AllOf(HasSubstr("exit code 1"), HasSubstr("Failed to open the API socket"),
                                  HasSubstr("serial says bye"))));
  ExpectNoProcessLeft();
}

TEST_F(VmmTest, ApiNeverReadyTimesOutAndKills) {
  std::string path = FakeFirecracker("exec sleep 60");
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(path));
  absl::Time start = absl::Now();
  EXPECT_THAT(
      Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "slow", .start_timeout = absl::Milliseconds(300)}),
      StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("not ready")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ExpectNoProcessLeft();
  struct stat st;
  EXPECT_NE(stat((dir_ + "/vm/api.sock").c_str(), &st), 0);
}

TEST_F(VmmTest, BindMountsAreSeenOnlyByTheVmm) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for a mount namespace";
  std::string original = dir_ + "/disk.img", copy = dir_ + "/clone.disk.img";
  std::ofstream(original) << "golden";
  std::ofstream(copy) << "private";
  // The fake records what it reads at the original path, then exits.
  std::string path = FakeFirecracker(absl::StrCat("cat ", original, " > ", dir_, "/seen; exit 0"));
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(path));
  EXPECT_THAT(Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "mnt", .bind_mounts = {{copy, original}}}),
              StatusIs(absl::StatusCode::kUnavailable));
  std::ifstream seen(dir_ + "/seen");
  std::string content;
  seen >> content;
  EXPECT_EQ(content, "private");
  std::ifstream host(original);
  host >> content;
  EXPECT_EQ(content, "golden");
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string all((std::istreambuf_iterator<char>(mountinfo)), std::istreambuf_iterator<char>());
  EXPECT_EQ(all.find(dir_), std::string::npos) << "a mount leaked to the host";
}

TEST_F(VmmTest, LaunchSuperviseAndKill) {
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(SelfExe()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "fake1"}));
  EXPECT_GT(vmm->startup_time(), absl::ZeroDuration());
  EXPECT_OK(vmm->CheckRunning());
  ASSERT_OK_AND_ASSIGN(InstanceInfo info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.id, "fake1");
  // The console is captured to memory and to its log file.
  ASSERT_OK(vmm->console()
                .WaitForLine([](absl::string_view l) { return l == "FAKE CONSOLE hello"; }, 0,
                             absl::Now() + absl::Seconds(10))
                .status());
  // Exactly stdin, stdout and stderr were inherited.
  std::ifstream in(dir_ + "/vm/fake.fds");
  std::string fds((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(fds, "0\n1\n2\n");
  // A refused request carries the fault message; the process lives on.
  EXPECT_THAT(vmm->api().InstanceStart(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not implemented")));
  EXPECT_OK(vmm->CheckRunning());

  pid_t pid = vmm->pid();
  ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.value, SIGKILL);
  EXPECT_EQ(kill(pid, 0), -1);
  struct stat st;
  EXPECT_NE(stat(vmm->api_socket_path().c_str(), &st), 0) << "API socket left behind";
  ASSERT_OK_AND_ASSIGN(std::string log, ReadFile(vmm->console_log_path()));
  EXPECT_EQ(log, "FAKE CONSOLE hello\n");
  ASSERT_OK_AND_ASSIGN(ExitStatus again, vmm->Kill());  // idempotent
  EXPECT_EQ(again.value, SIGKILL);
}

TEST_F(VmmTest, DestructorKillsAndCleansUp) {
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(SelfExe()));
  pid_t pid;
  std::string sock;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "fake2"}));
    pid = vmm->pid();
    sock = vmm->api_socket_path();
  }
  errno = 0;
  EXPECT_EQ(kill(pid, 0), -1) << "the fake still exists (not killed or not reaped)";
  EXPECT_EQ(errno, ESRCH);
  struct stat st;
  EXPECT_NE(stat(sock.c_str(), &st), 0);
}

TEST_F(VmmTest, CrashIsExplainedWithItsOutput) {
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(SelfExe()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "fake3"}));
  absl::Status st = vmm->Explain(vmm->api().Call("PUT", "/crash", "{}").status());
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kUnavailable,
                           AllOf(HasSubstr("PUT /crash"), HasSubstr("fake3"), HasSubstr("exit code 3"),
                                 HasSubstr("FAKE CONSOLE dying"), HasSubstr("crashing on request"))));
  EXPECT_THAT(vmm->CheckRunning(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("exit code 3")));
  ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.value, 3);
}

TEST_F(VmmTest, ApiReportingAnOldVersionIsRefused) {
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(SelfExe()));
  EXPECT_THAT(
      Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "oldapi"}),
      StatusIs(absl::StatusCode::kFailedPrecondition, AllOf(HasSubstr("1.7.0"), HasSubstr("1.12.0"))));
  struct stat st;
  EXPECT_NE(stat((dir_ + "/vm/api.sock").c_str(), &st), 0);
}

TEST_F(VmmTest, StaleSocketIsReplaced) {
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(SelfExe()));
  ASSERT_OK(MakeDirs(dir_ + "/vm"));
  { ASSERT_OK(ListenUnix(dir_ + "/vm/api.sock").status()); }  // bound, then closed: stale
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "fake4"}));
  EXPECT_OK(vmm->api().GetInstanceInfo().status());
  // Something that is not a socket at that path is not ours to delete.
  ASSERT_OK(vmm->Kill().status());
  std::ofstream(dir_ + "/vm/api.sock") << "precious";
  EXPECT_THAT(Vmm::Launch(bin, {.vm_dir = dir_ + "/vm", .id = "fake5"}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("not a socket")));
}

TEST_F(VmmTest, LaunchRejectsBadOptions) {
  std::string path = FakeFirecracker("exit 0");
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(path));
  EXPECT_THAT(Vmm::Launch(bin, {.vm_dir = ""}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Vmm::Launch(bin, {.vm_dir = dir_, .id = "bad id!"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad id!")));
  EXPECT_THAT(Vmm::Launch(bin, {.vm_dir = absl::StrCat(dir_, "/", std::string(120, 'x'))}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("longer than")));
}

TEST_F(VmmTest, CheckKernelImage) {
  EXPECT_THAT(CheckKernelImage(dir_ + "/vmlinux"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("vmlinux")));
  std::string lz4 = dir_ + "/vmlinuz";
  std::ofstream(lz4) << "\x02\x21\x4c\x18rest";
  EXPECT_THAT(CheckKernelImage(lz4),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr(lz4), HasSubstr("not an ELF"))));
  // Whoever can reach fcvmd must not learn what any file fcvmd can read
  // starts with: the error names the file, never its bytes.
  std::string secret = dir_ + "/secret";
  std::ofstream(secret) << "s3cr3t-token";
  absl::Status leak = CheckKernelImage(secret);
  EXPECT_THAT(leak, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(leak.message()), Not(AnyOf(HasSubstr("s3cr"), HasSubstr("73336372"))));
  EXPECT_THAT(std::string(CheckKernelImage(lz4).message()), Not(HasSubstr("02214c18")));
  std::string empty = dir_ + "/empty";
  std::ofstream(empty).flush();
  EXPECT_THAT(CheckKernelImage(empty), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  std::string elf = dir_ + "/elf";
  std::ofstream(elf) << "\x7f"
                        "ELF\x02\x01";
  EXPECT_OK(CheckKernelImage(elf));
}

}  // namespace
}  // namespace fcvm::firecracker
