// fcvm-pager: argument parsing, and the real command serving stand-in VMM
// processes (tests/integration/uffd/fake_vmm.cc) over real userfaultfd.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "pager/pager.h"
#include "tests/testing/status_matchers.h"

#include <cstring>

namespace fcvm::pager {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<PagerConfig> Parse(std::vector<std::string> args) {
  bool help = false;
  std::string text;
  return ParseArgs(args, &help, &text);
}

TEST(PagerArgs, PositionalForm) {
  ASSERT_OK_AND_ASSIGN(PagerConfig c,
                       Parse({"/run/s.sock", "/snap/mem", "--policy", "auto", "--fault-around", "32768",
                              "--no-zero-elision", "--on-bad-peer", "drop", "--once"}));
  ASSERT_EQ(c.snapshots.size(), 1u);
  EXPECT_EQ(c.snapshots[0].socket, "/run/s.sock");
  EXPECT_EQ(c.snapshots[0].mem_file, "/snap/mem");
  EXPECT_EQ(c.policy, uffd::ClonePolicy::kAuto);
  EXPECT_EQ(c.fault_around_bytes, 32768u);
  EXPECT_FALSE(c.zero_elision);
  EXPECT_EQ(c.on_bad_peer, uffd::FailurePolicy::kDrop);
  EXPECT_TRUE(c.once);
}

TEST(PagerArgs, SeveralSnapshots) {
  ASSERT_OK_AND_ASSIGN(PagerConfig c, Parse({"--snapshot", "a=/m/a", "--socket", "a=/s/a",
                                             "--snapshot=b=/m/b", "--socket=b=/s/b"}));
  ASSERT_EQ(c.snapshots.size(), 2u);
  EXPECT_EQ(c.snapshots[1].name, "b");
  EXPECT_EQ(c.snapshots[1].socket, "/s/b");
}

TEST(PagerArgs, ErrorsNameTheArgument) {
  EXPECT_THAT(Parse({}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nothing to serve")));
  EXPECT_THAT(Parse({"only-one"}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("SOCKET MEMFILE")));
  EXPECT_THAT(Parse({"s", "m", "--policy", "sometimes"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--policy")));
  EXPECT_THAT(Parse({"s", "m", "--fault-around", "1000"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("power of two")));
  EXPECT_THAT(Parse({"--snapshot", "a=/m"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--socket a")));
  EXPECT_THAT(Parse({"--snapshot", "a=/m", "--socket", "a=/s", "--socket", "b=/t"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--socket b")));
  EXPECT_THAT(Parse({"--snapshot", "noequals", "--socket", "a=/s"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NAME=VALUE")));
  EXPECT_THAT(Parse({"s", "m", "--on-bad-peer", "shrug"}), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A memory file in which half the pages are zero and the rest random.
std::string MakeMemFile(const std::string& path, size_t pages, uint32_t seed) {
  std::string data(pages * 4096, '\0');
  std::mt19937_64 rng(seed);
  for (size_t p = 0; p < pages; p += 2) {
    for (size_t w = 0; w < 4096 / 8; ++w) {
      uint64_t v = rng();
      std::memcpy(&data[p * 4096 + w * 8], &v, 8);
    }
  }
  EXPECT_OK(WriteFileAtomic(path, data));
  return path;
}

class PagerCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/dev/userfaultfd", R_OK | W_OK) != 0 && geteuid() != 0) {
      GTEST_SKIP() << "needs root or /dev/userfaultfd access";
    }
    char dir[] = "/tmp/fcvm-pager-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    if (pager_.valid()) (void)pager_.Kill();
    (void)RemoveTree(dir_);
  }

  void StartPager(std::vector<std::string> args) {
    out_path_ = dir_ + "/pager.out";
    int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    args.insert(args.begin(), FCVM_PAGER_PATH);
    SpawnOptions so;
    so.argv = args;
    so.fds = {{out, 1}, {out, 2}};
    ASSERT_OK_AND_ASSIGN(pager_, Process::Spawn(so));
    close(out);
  }

  void WaitForSocket(const std::string& path) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    struct stat st;
    while (stat(path.c_str(), &st) != 0) {
      ASSERT_LT(absl::Now(), deadline) << ReadFile(out_path_).value_or("");
      absl::SleepFor(absl::Milliseconds(5));
    }
  }

  Process Client(const std::string& socket, const std::string& mem, std::vector<std::string> extra = {}) {
    SpawnOptions so;
    so.argv = {FCVM_FAKE_VMM_PATH, "--socket=" + socket, "--memfile=" + mem, "--threads=2"};
    so.argv.insert(so.argv.end(), extra.begin(), extra.end());
    absl::StatusOr<Process> p = Process::Spawn(so);
    EXPECT_OK(p.status());
    return p.ok() ? *std::move(p) : Process();
  }

  std::string Output() { return ReadFile(out_path_).value_or(""); }

  std::string dir_, out_path_;
  Process pager_;
};

TEST_F(PagerCommandTest, ServesManyClientsAndRefusesBadOnesThenStopsCleanly) {
  std::string mem = MakeMemFile(dir_ + "/mem", 2048, 1);
  std::string sock = dir_ + "/pager.sock";
  StartPager({sock, mem});
  WaitForSocket(sock);
  std::vector<Process> good, bad;
  for (int i = 0; i < 8; ++i) {
    good.push_back(Client(sock, mem));
    if (i % 4 == 0) bad.push_back(Client(sock, mem, {"--bad=json"}));
  }
  for (Process& p : good) {
    ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait(absl::Seconds(60)));
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << Output();
  }
  for (Process& p : bad) {
    // Refused with a reason, and killed (default --on-bad-peer kill).
    ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait(absl::Seconds(30)));
    EXPECT_TRUE(st.signaled) << st.ToString();
  }
  ASSERT_OK(pager_.Signal(SIGTERM));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, pager_.Wait(absl::Seconds(30)));
  EXPECT_TRUE(st.success()) << st.ToString() << "\n" << Output();
  std::string out = Output();
  EXPECT_THAT(out, HasSubstr("8 connection(s) served, 2 refused"));
  EXPECT_THAT(out, HasSubstr("refused: "));
  EXPECT_NE(access(sock.c_str(), F_OK), 0) << "socket left behind";
}

// Issue 14 item 5: a handshake with bytes after the JSON array (here a NUL
// and more) is refused, as Firecracker's reference handler refuses it.
TEST_F(PagerCommandTest, RefusesBytesAfterTheJsonArray) {
  std::string mem = MakeMemFile(dir_ + "/mem", 512, 5);
  std::string sock = dir_ + "/nul.sock";
  StartPager({sock, mem});
  WaitForSocket(sock);
  Process bad = Client(sock, mem, {"--bad=trailing-nul"});
  ASSERT_OK_AND_ASSIGN(ExitStatus bst, bad.Wait(absl::Seconds(30)));
  EXPECT_TRUE(bst.signaled) << bst.ToString() << "\n" << Output();
  Process good = Client(sock, mem);
  ASSERT_OK_AND_ASSIGN(ExitStatus gst, good.Wait(absl::Seconds(60)));
  EXPECT_TRUE(gst.success()) << gst.ToString();
  ASSERT_OK(pager_.Signal(SIGTERM));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, pager_.Wait(absl::Seconds(30)));
  EXPECT_TRUE(st.success()) << st.ToString();
  EXPECT_THAT(Output(), HasSubstr("NUL byte at offset"));
  EXPECT_THAT(Output(), HasSubstr("1 connection(s) served, 1 refused"));
}

TEST_F(PagerCommandTest, OnceExitsWhenItsConnectionEnds) {
  std::string mem = MakeMemFile(dir_ + "/mem", 512, 2);
  std::string sock = dir_ + "/once.sock";
  StartPager({sock, mem, "--once", "--stats-interval", "50ms"});
  WaitForSocket(sock);
  Process c = Client(sock, mem);
  ASSERT_OK_AND_ASSIGN(ExitStatus cst, c.Wait(absl::Seconds(60)));
  EXPECT_TRUE(cst.success()) << cst.ToString();
  ASSERT_OK_AND_ASSIGN(ExitStatus st, pager_.Wait(absl::Seconds(30)));
  EXPECT_TRUE(st.success()) << st.ToString() << "\n" << Output();
  EXPECT_THAT(Output(), HasSubstr("1 connection(s) served"));
}

TEST_F(PagerCommandTest, TwoSnapshotsOnTheirOwnSockets) {
  std::string mem_a = MakeMemFile(dir_ + "/a", 1024, 3);
  std::string mem_b = MakeMemFile(dir_ + "/b", 1536, 4);
  std::string sa = dir_ + "/a.sock", sb = dir_ + "/b.sock";
  StartPager(
      {"--snapshot", "a=" + mem_a, "--socket", "a=" + sa, "--snapshot", "b=" + mem_b, "--socket", "b=" + sb});
  WaitForSocket(sa);
  WaitForSocket(sb);
  std::vector<Process> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(Client(sa, mem_a));
    clients.push_back(Client(sb, mem_b));
  }
  for (Process& p : clients) {
    ASSERT_OK_AND_ASSIGN(ExitStatus st, p.Wait(absl::Seconds(60)));
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << Output();
  }
  ASSERT_OK(pager_.Signal(SIGINT));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, pager_.Wait(absl::Seconds(30)));
  EXPECT_TRUE(st.success());
  EXPECT_THAT(Output(), HasSubstr("6 connection(s) served"));
  EXPECT_THAT(Output(), HasSubstr("[a] connection"));
  EXPECT_THAT(Output(), HasSubstr("[b] connection"));
}

TEST_F(PagerCommandTest, MissingMemoryFileFailsAtStart) {
  StartPager({dir_ + "/x.sock", dir_ + "/no-such-memfile"});
  ASSERT_OK_AND_ASSIGN(ExitStatus st, pager_.Wait(absl::Seconds(30)));
  EXPECT_EQ(st.value, 1);
  EXPECT_THAT(Output(), HasSubstr("no-such-memfile"));
}

}  // namespace
}  // namespace fcvm::pager
