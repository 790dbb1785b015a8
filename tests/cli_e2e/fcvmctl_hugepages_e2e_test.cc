// Huge-page guests through fcvmd and fcvmctl with the real Firecracker and the
// test guest: run --huge-pages 2M (guest memory on the host's 2 MiB pool),
// snapshot (it records its page size), clone x4 through the page server,
// every clone ticks OK from huge pages; the File backend and a clone count
// the pool cannot hold are refused up front. Needs root to add pages to the
// pool for the test (HugePageReservation, given back at the end); skips with
// the reason otherwise, and without Firecracker or /dev/kvm.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <optional>
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
#include "lib/base/hugetlb.h"
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

constexpr uint64_t k2M = 2 << 20;
// The golden VM and four clones of 128 MiB (64 pages each), and some slack.
constexpr uint64_t kPoolPages = 5 * 64 + 16;

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

// HugetlbPages of a process (kB), from /proc/<pid>/status: its hugetlbfs
// memory actually in use.
uint64_t HugetlbKib(int pid) {
  std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status")).value_or("");
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    if (absl::ConsumePrefix(&line, "HugetlbPages:")) {
      uint64_t kib = 0;
      line = absl::StripAsciiWhitespace(line);
      (void)absl::SimpleAtoi(line.substr(0, line.find(' ')), &kib);
      return kib;
    }
  }
  return 0;
}

// proto3 JSON prints uint64 fields as strings.
uint64_t U64(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  uint64_t v = 0;
  if (j.is_string()) (void)absl::SimpleAtoi(j.get<std::string>(), &v);
  return v;
}

class FcvmctlHugePagesE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    absl::StatusOr<HugePagePool> pool = ReadHugePagePoolOf(k2M);
    if (!pool.ok()) GTEST_SKIP() << "no 2 MiB huge page pool: " << pool.status();
    absl::StatusOr<HugePageReservation> r = HugePageReservation::Add(kPoolPages);
    if (!r.ok()) GTEST_SKIP() << "cannot reserve " << kPoolPages << " huge pages: " << r.status();
    pages_ = std::move(*r);
    socket_ = tmp_.path() + "/fcvmd.sock";
    ASSERT_OK_AND_ASSIGN(daemon_, e2e::StartFcvmd(FCVMD_PATH, tmp_.path()));
  }

  void TearDown() override {
    if (!daemon_.valid()) return;
    ASSERT_OK(daemon_.Signal(SIGTERM));
    ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
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

  // Waits for `want` OK ticks on the console; returns them (BAD ticks: 0).
  int WaitOkTicks(const std::string& console, int want) {
    absl::Time until = absl::Now() + absl::Seconds(40);
    int bad = 0, ok = 0;
    while ((ok = OkTicks(console, &bad)) < want && bad == 0 && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(bad, 0) << ReadFile(console).value_or("");
    return bad == 0 ? ok : 0;
  }

  e2e::TempDir tmp_;
  std::optional<HugePageReservation> pages_;
  std::string socket_;
  Process daemon_;
};

TEST_F(FcvmctlHugePagesE2eTest, RunSnapshotCloneFourFromHugePages) {
  json vm = Ctl({"run", "--name", "huge-vm", "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs,
                 "--memory-mib", "128", "--huge-pages", "2M"});
  ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
  EXPECT_EQ(vm["config"]["huge_pages"], "HUGE_PAGES_2M") << vm.dump();
  ASSERT_GE(WaitOkTicks(vm["console_log_path"], 2), 2);
  EXPECT_GT(HugetlbKib(vm["pid"]), 0u) << "the guest's memory is not on hugetlbfs";

  json snap = Ctl({"snapshot", "create", "huge-vm", "--name", "huge"});
  ASSERT_EQ(snap["name"], "huge") << snap.dump();
  EXPECT_EQ(U64(snap["memory_page_size"]), k2M) << snap.dump();
  Result get = CtlRaw({"snapshot", "get", "huge"});
  EXPECT_EQ(get.code, 0) << get.err;
  EXPECT_THAT(get.out, HasSubstr("2 MiB (huge pages"));

  // File: refused before any Firecracker starts (Firecracker itself would
  // exit on such a load).
  Result file = CtlRaw({"clone", "huge", "--count", "2", "--backend", "file"});
  EXPECT_EQ(file.code, 1);
  EXPECT_THAT(file.err, HasSubstr("invalid argument"));
  EXPECT_THAT(file.err, HasSubstr("UFFD"));
  // More clones than the pool can hold: refused up front with need and free.
  Result many = CtlRaw({"clone", "huge", "--count", "1000"});
  EXPECT_EQ(many.code, 1);
  EXPECT_THAT(many.err, HasSubstr("not enough huge pages"));
  EXPECT_THAT(many.err, HasSubstr("need 64000 pages"));
  EXPECT_TRUE(Ctl({"ls", "--snapshot", "huge"})["vms"].empty());

  json clones = Ctl({"clone", "huge", "--count", "4"});
  ASSERT_EQ(clones["succeeded"], 4) << clones.dump();
  std::vector<std::string> ids;
  for (const json& c : clones["clones"]) {
    EXPECT_EQ(c["state"], "VM_STATE_RUNNING") << c.dump();
    EXPECT_EQ(c["memory_backend"], "MEMORY_BACKEND_UFFD") << c.dump();
    EXPECT_EQ(c["config"]["huge_pages"], "HUGE_PAGES_2M") << c.dump();
    ids.push_back(c["id"]);
  }
  for (const json& c : clones["clones"]) {
    std::string log = c["console_log_path"];
    EXPECT_GE(WaitOkTicks(log, 2), 2) << c["name"] << ": " << ReadFile(log).value_or("");
    EXPECT_GT(HugetlbKib(c["pid"]), 0u) << c["name"] << ": clone memory not on hugetlbfs";
  }
  json stats = Ctl({"stats"});
  EXPECT_FALSE(stats.dump().empty());

  std::vector<std::string> rm = {"rm"};
  rm.insert(rm.end(), ids.begin(), ids.end());
  rm.push_back("huge-vm");
  Result r = CtlRaw(rm);
  EXPECT_EQ(r.code, 0) << r.err;
  Result srm = CtlRaw({"snapshot", "rm", "huge"});
  EXPECT_EQ(srm.code, 0) << srm.err;
}

}  // namespace
}  // namespace fcvm
