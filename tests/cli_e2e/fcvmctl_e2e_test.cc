// The product path through fcvmd and fcvmctl with the real Firecracker and
// the test guest: run -> snapshot -> clone x10 -> every clone ticks OK ->
// delete all -> nothing left. Skips without Firecracker or /dev/kvm.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

using Result = ::fcvm::testing::CommandResult;
using ::fcvm::testing::RunCommand;

int OkTicks(const std::string& console_log, int* bad) {
  static const std::regex kTick("^FCVM-GUEST TICK ([0-9]+) (OK|BAD)( |$)");
  int ok = 0;
  *bad = 0;
  for (absl::string_view line : absl::StrSplit(ReadFile(console_log).value_or(""), '\n')) {
    std::string l(line);
    std::smatch m;
    if (std::regex_search(l, m, kTick)) (m[2] == "OK" ? ok : *bad)++;
  }
  return ok;
}

class FcvmctlE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    socket_ = tmp_.path() + "/fcvmd.sock";
    int log = open((tmp_.path() + "/fcvmd.log").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    SpawnOptions so;
    so.argv = {FCVMD_PATH,
               "--socket",
               socket_,
               "--state-dir",
               tmp_.path() + "/state",
               "--firecracker",
               e2e::FirecrackerPath()};
    so.fds = {{log, 2}};
    ASSERT_OK_AND_ASSIGN(daemon_, Process::Spawn(so));
    close(log);
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!ConnectUnix(socket_).ok()) {
      ASSERT_LT(absl::Now(), deadline) << ReadFile(tmp_.path() + "/fcvmd.log").value_or("");
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  void TearDown() override {
    if (!daemon_.valid()) return;
    ASSERT_OK(daemon_.Signal(SIGTERM));
    ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << ReadFile(tmp_.path() + "/fcvmd.log").value_or("");
    std::vector<std::string> left = e2e::Leftovers(tmp_.path());
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
  }

  json Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_, "--json"});
    Result r = RunCommand(args);
    EXPECT_EQ(r.code, 0) << absl::StrJoin(args, " ") << "\n" << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  e2e::TempDir tmp_;
  std::string socket_;
  Process daemon_;
};

TEST_F(FcvmctlE2eTest, RunSnapshotCloneTenDeleteAll) {
  json vm = Ctl({"run", "--name", "golden-vm", "--kernel", e2e::GuestPath(), "--boot-args",
                 e2e::kGuestBootArgs, "--memory-mib", "128", "--label", "role=base"});
  ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
  std::string console = vm["console_log_path"];
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  int bad = 0;
  while (OkTicks(console, &bad) < 2 && bad == 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(bad, 0);

  json snap = Ctl({"snapshot", "create", "golden-vm", "--name", "golden"});
  ASSERT_EQ(snap["name"], "golden") << snap.dump();

  json clones = Ctl({"clone", "golden", "--count", "10"});
  ASSERT_EQ(clones["succeeded"], 10) << clones.dump();
  ASSERT_EQ(clones["clones"].size(), 10u);
  std::vector<std::string> ids;
  for (const json& c : clones["clones"]) {
    EXPECT_EQ(c["state"], "VM_STATE_RUNNING") << c.dump();
    ids.push_back(c["id"]);
  }
  // Every clone continues the guest: OK ticks, never BAD.
  for (const json& c : clones["clones"]) {
    std::string log = c["console_log_path"];
    absl::Time until = absl::Now() + absl::Seconds(40);
    int ok = 0;
    while ((ok = OkTicks(log, &bad)) < 2 && bad == 0 && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(bad, 0) << c["name"] << ": " << ReadFile(log).value_or("");
    EXPECT_GE(ok, 2) << c["name"] << ": " << ReadFile(log).value_or("");
  }

  json ls = Ctl({"ls", "--snapshot", "golden"});
  EXPECT_EQ(ls["vms"].size(), 10u);
  json stats = Ctl({"stats"});
  EXPECT_FALSE(stats.dump().empty());

  std::vector<std::string> rm = {"rm"};
  rm.insert(rm.end(), ids.begin(), ids.end());
  rm.push_back("golden-vm");
  Result r = RunCommand([&] {
    std::vector<std::string> a = {FCVMCTL_PATH, "--socket", socket_};
    a.insert(a.end(), rm.begin(), rm.end());
    return a;
  }());
  EXPECT_EQ(r.code, 0) << r.err;
  Result srm = RunCommand({FCVMCTL_PATH, "--socket", socket_, "snapshot", "rm", "golden"});
  EXPECT_EQ(srm.code, 0) << srm.err;
  json empty = Ctl({"ls"});
  EXPECT_TRUE(empty["vms"].empty()) << empty.dump();
}

TEST_F(FcvmctlE2eTest, ErrorsAreOneLineWithExitCodes) {
  Result missing = RunCommand({FCVMCTL_PATH, "--socket", socket_, "run", "--kernel", tmp_.path() + "/nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope"));
  Result unknown = RunCommand({FCVMCTL_PATH, "--socket", socket_, "clone", "no-such-snapshot"});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("not found"));
  Result bad_name = RunCommand(
      {FCVMCTL_PATH, "--socket", socket_, "run", "--name", "../evil", "--kernel", e2e::GuestPath()});
  EXPECT_EQ(bad_name.code, 1);
  EXPECT_THAT(bad_name.err, HasSubstr("vm name"));
}

}  // namespace
}  // namespace fcvm
