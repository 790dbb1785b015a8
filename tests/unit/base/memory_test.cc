// Host memory settings fcvm reads and changes: the huge page pool of a given
// page size (sysfs), KSM's settings (scoped, put back), and a spawned
// process's memory merging (PR_SET_MEMORY_MERGE before exec). The sysfs
// parts run against a directory laid out like sysfs; the prctl test needs
// Linux 6.4+ and skips, with the reason, elsewhere.

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/hugetlb.h"
#include "lib/base/ksm.h"
#include "lib/base/process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;
using ::fcvm::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

void Put(const std::string& path, const std::string& value) {
  ASSERT_OK(WriteFileAtomic(path, value + "\n", 0644));
}

uint64_t Get(const std::string& path) {
  std::string s = ReadFile(path).value_or("?");
  return std::stoull(s);
}

TEST(HugePagePoolOf, ReadsThePoolOfThatSize) {
  TempDir sys;
  std::string dir = sys.Sub("hugepages-2048kB");
  ASSERT_OK(MakeDirs(dir, 0755));
  Put(dir + "/nr_hugepages", "100");
  Put(dir + "/free_hugepages", "40");
  Put(dir + "/resv_hugepages", "10");
  Put(dir + "/surplus_hugepages", "2");
  Put(dir + "/nr_overcommit_hugepages", "8");
  ASSERT_OK_AND_ASSIGN(HugePagePool pool, ReadHugePagePoolOf(2 << 20, sys.path()));
  EXPECT_EQ(pool.page_size, 2u << 20);
  EXPECT_EQ(pool.total, 100u);
  EXPECT_EQ(pool.free, 40u);
  EXPECT_EQ(pool.reserved, 10u);
  EXPECT_EQ(pool.surplus, 2u);
  EXPECT_EQ(pool.overcommit, 8u);
  // 30 free and unpromised, 6 more surplus pages the kernel may add.
  EXPECT_EQ(pool.available(), 36u);

  EXPECT_THAT(ReadHugePagePoolOf(1 << 30, sys.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("1048576 KiB")));
  Put(dir + "/free_hugepages", "lots");
  EXPECT_THAT(ReadHugePagePoolOf(2 << 20, sys.path()),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("free_hugepages")));
}

TEST(HugePagePoolOf, AvailableNeverUnderflows) {
  HugePagePool pool{
      .page_size = 2 << 20, .total = 4, .free = 1, .reserved = 3, .surplus = 5, .overcommit = 2};
  EXPECT_EQ(pool.available(), 0u);
}

TEST(HugePagePoolOf, ThisHostsTwoMegabytePool) {
  absl::StatusOr<HugePagePool> pool = ReadHugePagePoolOf(2 << 20);
  if (absl::IsNotFound(pool.status())) GTEST_SKIP() << pool.status();
  ASSERT_OK(pool.status());
  EXPECT_LE(pool->free, pool->total + pool->surplus);
}

class KsmControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* f : {"run", "pages_to_scan", "sleep_millisecs", "pages_shared", "pages_sharing",
                          "pages_unshared", "pages_volatile", "full_scans"}) {
      Put(dir_.Sub(f), "0");
    }
    Put(dir_.Sub("pages_to_scan"), "100");
    Put(dir_.Sub("sleep_millisecs"), "20");
  }
  TempDir dir_;
};

TEST_F(KsmControlTest, AppliesAndPutsBack) {
  {
    ASSERT_OK_AND_ASSIGN(KsmControl c, KsmControl::Apply({.run = 1, .pages_to_scan = 1000}, dir_.path()));
    EXPECT_EQ(Get(dir_.Sub("run")), 1u);
    EXPECT_EQ(Get(dir_.Sub("pages_to_scan")), 1000u);
    EXPECT_EQ(Get(dir_.Sub("sleep_millisecs")), 20u) << "unset: left alone";
    EXPECT_THAT(c.Describe(), ElementsAre("pages_to_scan: 100 -> 1000", "run: 0 -> 1"));
    ASSERT_OK_AND_ASSIGN(KsmStatus st, ReadKsm(dir_.path()));
    EXPECT_EQ(st.run, 1u);
    EXPECT_EQ(st.pages_to_scan, 1000u);
    KsmControl moved = std::move(c);  // the moved-from object puts nothing back
    EXPECT_EQ(Get(dir_.Sub("run")), 1u);
  }
  EXPECT_EQ(Get(dir_.Sub("run")), 0u);
  EXPECT_EQ(Get(dir_.Sub("pages_to_scan")), 100u);
}

TEST_F(KsmControlTest, ALaterChangeBySomeoneElseWins) {
  ASSERT_OK_AND_ASSIGN(KsmControl c, KsmControl::Apply({.run = 1, .sleep_millisecs = 5}, dir_.path()));
  Put(dir_.Sub("sleep_millisecs"), "50");  // an administrator, meanwhile
  ASSERT_OK(c.Restore());
  EXPECT_EQ(Get(dir_.Sub("sleep_millisecs")), 50u);
  EXPECT_EQ(Get(dir_.Sub("run")), 0u);
  ASSERT_OK(c.Restore());  // nothing left to put back
}

TEST_F(KsmControlTest, UnchangedSettingsAreNotTouched) {
  ASSERT_OK_AND_ASSIGN(KsmControl c, KsmControl::Apply({.pages_to_scan = 100}, dir_.path()));
  EXPECT_TRUE(c.Describe().empty());
}

TEST_F(KsmControlTest, RefusesUnmergeAllAndMissingKsm) {
  EXPECT_THAT(KsmControl::Apply({.run = 2}, dir_.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unmerges")));
  EXPECT_THAT(KsmControl::Apply({.run = 1}, dir_.Sub("nope")), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ReadKsm(dir_.Sub("nope")), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(KsmControlTest, AFailedApplyPutsBackWhatItChanged) {
  ASSERT_EQ(unlink(dir_.Sub("run").c_str()), 0);
  EXPECT_THAT(KsmControl::Apply({.run = 1, .pages_to_scan = 5000}, dir_.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("run")));
  EXPECT_EQ(Get(dir_.Sub("pages_to_scan")), 100u);
}

// What fcvmd relies on for --ksm: the flag set in the child before exec is
// what the new program runs with.
TEST(SpawnMemoryMerge, SurvivesExec) {
  if (absl::Status st = MemoryMergeSupported(); !st.ok()) GTEST_SKIP() << st;
  ASSERT_OK_AND_ASSIGN(Process merged, Process::Spawn({.argv = {"/bin/sleep", "60"}, .memory_merge = true}));
  ASSERT_OK_AND_ASSIGN(Process plain, Process::Spawn({.argv = {"/bin/sleep", "60"}}));
  absl::StatusOr<std::string> stat = ReadFile(absl::StrCat("/proc/", merged.pid(), "/ksm_stat"));
  if (!stat.ok()) GTEST_SKIP() << "no /proc/<pid>/ksm_stat: " << stat.status();
  // Spawn returns once exec succeeded: this is sleep's own state.
  EXPECT_THAT(*stat, HasSubstr("ksm_merge_any: yes"));
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", plain.pid(), "/ksm_stat")).value_or(""),
              HasSubstr("ksm_merge_any: no"));
  // The merging child did not share our memory when it set the flag (Spawn's
  // other children do, until their exec): we are not marked.
  EXPECT_THAT(ReadFile("/proc/self/ksm_stat").value_or(""), HasSubstr("ksm_merge_any: no"));
}

}  // namespace
}  // namespace fcvm
