// fcvmd --ksm with the real Firecracker, the test guest and the host's ksmd:
// with --ksm=manage, fcvmd runs ksmd at the rates given while it runs, every
// Firecracker it starts has its memory mergeable (ksm_merge_any), the UFFD
// clones of one snapshot get their identical pages merged while their guests
// keep ticking OK, and ksmd's settings are as before once fcvmd stops. With
// --ksm=off, no Firecracker is mergeable and nothing of the host's changes.
// Needs root (ksmd's settings) and a kernel with PR_SET_MEMORY_MERGE; skips
// with the reason otherwise, and without Firecracker or /dev/kvm. Holds the
// `ksm` resource lock: ksmd is host-wide.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <regex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/ksm.h"
#include "lib/base/process.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

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

// A field of /proc/<pid>/ksm_stat ("ksm_merging_pages 12", "ksm_merge_any:
// yes"), as text; empty when the process or the field is gone.
std::string KsmStat(int pid, absl::string_view field) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/ksm_stat")).value_or("");
  for (absl::string_view line : absl::StrSplit(stat, '\n')) {
    if (absl::ConsumePrefix(&line, field)) {
      absl::ConsumePrefix(&line, ":");
      return std::string(absl::StripAsciiWhitespace(line));
    }
  }
  return "";
}

uint64_t MergingPages(int pid) {
  uint64_t v = 0;
  (void)absl::SimpleAtoi(KsmStat(pid, "ksm_merging_pages"), &v);
  return v;
}

class FcvmdKsmE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    if (absl::Status st = MemoryMergeSupported(); !st.ok()) GTEST_SKIP() << st;
    absl::StatusOr<KsmStatus> k = ReadKsm();
    if (!k.ok()) GTEST_SKIP() << "no KSM: " << k.status();
    if (access((std::string(kKsmDir) + "/run").c_str(), W_OK) != 0)
      GTEST_SKIP() << "ksmd's settings need root";
    if (k->run == 2) GTEST_SKIP() << "ksmd is unmerging everything (run = 2)";
    before_ = *k;
    read_before_ = true;
    socket_ = tmp_.path() + "/fcvmd.sock";
  }

  void TearDown() override {
    StopDaemon();
    // Whatever happened, ksmd as it was (fcvmd should have done it: checked
    // in the test). Not after a skip: nothing was read, nothing changed.
    if (!read_before_) return;
    absl::StatusOr<KsmStatus> k = ReadKsm();
    if (k.ok()) {
      auto put_back = [](const char* name, uint64_t now, uint64_t was) {
        if (now == was) return;
        // sysfs: written in place, not through a renamed temporary file.
        int fd = open(absl::StrCat(kKsmDir, "/", name).c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0) return;
        std::string v = absl::StrCat(was);
        (void)!write(fd, v.data(), v.size());
        close(fd);
      };
      put_back("sleep_millisecs", k->sleep_millisecs, before_.sleep_millisecs);
      put_back("pages_to_scan", k->pages_to_scan, before_.pages_to_scan);
      put_back("run", k->run, before_.run);
    }
  }

  void StartDaemon(std::vector<std::string> extra) {
    extra.insert(extra.begin(), {"--warm-pool", "0"});
    ASSERT_OK_AND_ASSIGN(daemon_, e2e::StartFcvmd(FCVMD_PATH, tmp_.path(), extra));
  }

  void StopDaemon() {
    if (!daemon_.valid()) return;
    ASSERT_OK(daemon_.Signal(SIGTERM));
    ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
    daemon_ = Process();
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << DaemonLog();
    std::vector<std::string> left = e2e::Leftovers(tmp_.path());
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
  }

  std::string DaemonLog() { return ReadFile(tmp_.path() + "/fcvmd.log").value_or(""); }

  Result CtlRaw(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_});
    return RunCommand(args);
  }

  json Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_, "--json"});
    Result r = RunCommand(args);
    EXPECT_EQ(r.code, 0) << absl::StrJoin(args, " ") << "\n" << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  // Waits until the console shows `want` OK ticks and no BAD one.
  bool WaitOkTicks(const std::string& console, int want) {
    absl::Time until = absl::Now() + absl::Seconds(40);
    int bad = 0, ok = 0;
    while ((ok = OkTicks(console, &bad)) < want && bad == 0 && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(bad, 0) << ReadFile(console).value_or("");
    return bad == 0 && ok >= want;
  }

  // A running guest's snapshot ("base"; the VM is stopped), and `n` UFFD
  // clones of it, each ticking OK. Returns the clones.
  json SnapshotAndClone(int n) {
    json vm = Ctl({"run", "--name", "src", "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs});
    EXPECT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
    EXPECT_TRUE(WaitOkTicks(vm["console_log_path"], 2));
    json snap = Ctl({"snapshot", "create", "src", "--name", "base", "--after", "stop"});
    EXPECT_EQ(snap["name"], "base") << snap.dump();
    json clones = Ctl({"clone", "base", "--count", absl::StrCat(n), "--backend", "uffd"});
    EXPECT_EQ(clones["succeeded"], n) << clones.dump();
    for (const json& c : clones["clones"]) EXPECT_TRUE(WaitOkTicks(c["console_log_path"], 2)) << c["name"];
    return clones;
  }

  void DeleteAll(const json& clones) {
    std::vector<std::string> rm = {"rm"};  // "src" went with --after stop
    for (const json& c : clones["clones"]) rm.push_back(c["id"]);
    Result r = CtlRaw(rm);
    EXPECT_EQ(r.code, 0) << r.err;
    Result srm = CtlRaw({"snapshot", "rm", "base"});
    EXPECT_EQ(srm.code, 0) << srm.err;
  }

  e2e::TempDir tmp_;
  KsmStatus before_;
  bool read_before_ = false;
  std::string socket_;
  Process daemon_;
};

TEST_F(FcvmdKsmE2eTest, ManageMergesUffdClonesAndPutsKsmdBack) {
  // Rates unlike the host's (and unlike the kernel's defaults), so that both
  // the change and the restore show.
  const uint64_t pages = before_.pages_to_scan == 2345 ? 2346 : 2345;
  const uint64_t sleep_ms = before_.sleep_millisecs == 7 ? 8 : 7;
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--ksm", "manage", "--ksm-pages-to-scan", absl::StrCat(pages),
                                       "--ksm-sleep-ms", absl::StrCat(sleep_ms)}));
  ASSERT_OK_AND_ASSIGN(KsmStatus running, ReadKsm());
  EXPECT_EQ(running.run, 1u);
  EXPECT_EQ(running.pages_to_scan, pages);
  EXPECT_EQ(running.sleep_millisecs, sleep_ms);

  json clones = SnapshotAndClone(4);
  ASSERT_FALSE(HasFailure());
  std::vector<int> pids;
  for (const json& c : clones["clones"]) {
    pids.push_back(c["pid"]);
    EXPECT_EQ(KsmStat(pids.back(), "ksm_merge_any"), "yes") << c["name"];
  }
  // The clones hold private copies of the same snapshot pages (the page
  // server copies each one in): ksmd merges them. 4 clones of this guest
  // have ~10 MiB each installed; at least 1 MiB per clone must merge.
  absl::Time until = absl::Now() + absl::Seconds(90);
  uint64_t merging = 0;
  while (absl::Now() < until) {
    merging = 0;
    for (int pid : pids) merging += MergingPages(pid);
    if (merging >= 4 * 256) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_GE(merging, 4u * 256) << "pages of 4 UFFD clones merged by ksmd";
  // The guests check their memory at every tick: still OK, now on merged
  // (copy-on-write) pages.
  for (const json& c : clones["clones"]) {
    int bad = 0;
    int ok = OkTicks(c["console_log_path"], &bad);
    EXPECT_TRUE(WaitOkTicks(c["console_log_path"], ok + 2)) << c["name"];
  }
  DeleteAll(clones);
  StopDaemon();
  ASSERT_OK_AND_ASSIGN(KsmStatus after, ReadKsm());
  EXPECT_EQ(after.run, before_.run);
  EXPECT_EQ(after.pages_to_scan, before_.pages_to_scan);
  EXPECT_EQ(after.sleep_millisecs, before_.sleep_millisecs);
}

TEST_F(FcvmdKsmE2eTest, OffLeavesFirecrackerUnmergeableAndKsmdAlone) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon({"--ksm", "off"}));
  json clones = SnapshotAndClone(2);
  ASSERT_FALSE(HasFailure());
  for (const json& c : clones["clones"]) {
    EXPECT_EQ(KsmStat(c["pid"], "ksm_merge_any"), "no") << c["name"];
    EXPECT_EQ(MergingPages(c["pid"]), 0u) << c["name"];
  }
  ASSERT_OK_AND_ASSIGN(KsmStatus running, ReadKsm());
  EXPECT_EQ(running.run, before_.run);
  EXPECT_EQ(running.pages_to_scan, before_.pages_to_scan);
  EXPECT_EQ(running.sleep_millisecs, before_.sleep_millisecs);
  DeleteAll(clones);
}

}  // namespace
}  // namespace fcvm
