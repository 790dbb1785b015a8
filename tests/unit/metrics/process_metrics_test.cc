#include "lib/metrics/process_metrics.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/unique_fd.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::metrics {
namespace {

using ::fcvm::testing::StatusIs;

// name -> value of the unlabelled samples in an exposition.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    std::vector<absl::string_view> kv = absl::StrSplit(line, ' ');
    double v = 0;
    if (kv.size() == 2 && absl::SimpleAtod(kv[1], &v)) out[std::string(kv[0])] = v;
  }
  return out;
}

TEST(ProcStatTest, ParsesFieldsAfterTheCommand) {
  // A command name with spaces and parentheses; fields 14, 15, 20, 22, 23, 24
  // are 11, 12, 5, 123456, 4096000, 250.
  std::string text =
      "4242 (a) (b c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 11 12 0 0 20 0 5 0 123456 4096000 250 "
      "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
  ASSERT_OK_AND_ASSIGN(ProcStat s, ParseProcStat(text));
  EXPECT_EQ(s.utime_ticks, 11u);
  EXPECT_EQ(s.stime_ticks, 12u);
  EXPECT_EQ(s.num_threads, 5);
  EXPECT_EQ(s.start_ticks, 123456u);
  EXPECT_EQ(s.vsize_bytes, 4096000u);
  EXPECT_EQ(s.rss_pages, 250);
}

TEST(ProcStatTest, RefusesMalformedText) {
  EXPECT_THAT(ParseProcStat("no parenthesis"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseProcStat("1 (x) S 1 2 3"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseProcStat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 12 0 0 20 0 5 0 1 2 3"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ProcStatTest, ParsesBootTime) {
  ASSERT_OK_AND_ASSIGN(int64_t btime, ParseBootTime("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"));
  EXPECT_EQ(btime, 1700000000);
  EXPECT_THAT(ParseBootTime("cpu 1 2 3\n"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseBootTime("btime x\n"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ProcStatTest, ParsesThisProcess) {
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFile("/proc/self/stat"));
  ASSERT_OK_AND_ASSIGN(ProcStat s, ParseProcStat(text));
  EXPECT_GE(s.num_threads, 1);
  EXPECT_GT(s.rss_pages, 0);
  EXPECT_GT(s.vsize_bytes, 0u);
  EXPECT_GT(s.start_ticks, 0u);
}

TEST(ProcessMetricsTest, CountsOpenFds) {
  ASSERT_OK_AND_ASSIGN(int64_t before, CountOpenFds());
  UniqueFd a(open("/dev/null", O_RDONLY | O_CLOEXEC)), b(open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(a.valid() && b.valid());
  ASSERT_OK_AND_ASSIGN(int64_t with_two, CountOpenFds());
  EXPECT_EQ(with_two, before + 2);
  a.Reset();
  b.Reset();
  ASSERT_OK_AND_ASSIGN(int64_t after, CountOpenFds());
  EXPECT_EQ(after, before);
}

TEST(ProcessMetricsTest, ReportsThisProcess) {
  Registry r;
  absl::Time before_start_check = absl::Now();
  ASSERT_OK_AND_ASSIGN(std::vector<CallbackHandle> handles, AddProcessMetrics(r));
  EXPECT_EQ(handles.size(), 7u);

  std::map<std::string, double> s = Samples(r.Render());
  for (const char* name :
       {"process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_resident_memory_bytes",
        "process_virtual_memory_bytes", "process_start_time_seconds", "process_threads"}) {
    EXPECT_TRUE(s.count(name)) << name << " missing";
  }
  EXPECT_GE(s["process_cpu_seconds_total"], 0);
  EXPECT_GT(s["process_resident_memory_bytes"], 0);
  EXPECT_GE(s["process_virtual_memory_bytes"], s["process_resident_memory_bytes"]);
  rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  EXPECT_EQ(s["process_max_fds"], static_cast<double>(rl.rlim_cur));
  // Started before this test, and not before the machine booted (1 s of slack
  // for clock-tick rounding).
  EXPECT_LE(s["process_start_time_seconds"],
            static_cast<double>(absl::ToUnixMillis(before_start_check)) / 1000 + 1);
  EXPECT_GT(s["process_start_time_seconds"],
            static_cast<double>(absl::ToUnixMillis(before_start_check)) / 1000 - 24 * 3600);

  // Live values: one more fd and one more thread show at the next scrape.
  UniqueFd extra(open("/dev/null", O_RDONLY | O_CLOEXEC));
  absl::Notification stop;
  std::thread t([&] { stop.WaitForNotification(); });
  std::map<std::string, double> s2 = Samples(r.Render());
  stop.Notify();
  t.join();
  EXPECT_EQ(s2["process_open_fds"], s["process_open_fds"] + 1);
  EXPECT_EQ(s2["process_threads"], s["process_threads"] + 1);

  // Twice is refused; dropping the handles removes them.
  EXPECT_THAT(AddProcessMetrics(r).status(), StatusIs(absl::StatusCode::kAlreadyExists));
  handles.clear();
  EXPECT_EQ(r.Render(), "");
}

}  // namespace
}  // namespace fcvm::metrics
