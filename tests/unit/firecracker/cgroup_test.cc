// cgroup planning against fake hosts: mounts files and cgroup trees in a
// temporary directory (the real ones are exercised by tests/e2e).

#include "lib/firecracker/cgroup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/fc-cgroup-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { EXPECT_OK(RemoveTree(dir_)); }

  void Write(const std::string& path, const std::string& text) {
    ASSERT_OK(MakeDirs(path.substr(0, path.rfind('/')), 0755));
    std::ofstream(path) << text;
  }

  // A host like the project's test machine: v1 controllers, one of them
  // co-mounted, a named hierarchy, and a cgroup2 mount with hugetlb only.
  CgroupHost Hybrid() {
    Write(dir_ + "/unified/cgroup.controllers", "hugetlb\n");
    std::string mounts = absl::StrCat(
        "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n",  //
        "cgroup ", dir_, "/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n", "cgroup ", dir_,
        "/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0\n", "cgroup ", dir_,
        "/pids cgroup rw,relatime,pids 0 0\n",  //
        "cgroup ", dir_, "/memory2 cgroup rw,relatime,memory 0 0\n", "cgroup ", dir_,
        "/systemd cgroup rw,relatime,name=systemd 0 0\n", "cgroup2 ", dir_,
        "/unified cgroup2 rw,relatime,nsdelegate 0 0\n", "cgroup2 ", dir_, "/second cgroup2 rw 0 0\n");
    Write(dir_ + "/mounts", mounts);
    absl::StatusOr<CgroupHost> host = CgroupHost::Detect(dir_ + "/mounts");
    EXPECT_OK(host.status());
    return host.ok() ? *host : CgroupHost();
  }

  CgroupHost PureV2() {
    Write(dir_ + "/v2/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
    Write(dir_ + "/mounts2", absl::StrCat("cgroup2 ", dir_, "/v2 cgroup2 rw,nosuid,nodev,noexec 0 0\n"));
    absl::StatusOr<CgroupHost> host = CgroupHost::Detect(dir_ + "/mounts2");
    EXPECT_OK(host.status());
    return host.ok() ? *host : CgroupHost();
  }

  std::string dir_;
};

TEST_F(CgroupTest, DetectsHybridHostAsTheJailerDoes) {
  CgroupHost host = Hybrid();
  // The first hierarchy with a controller wins; mount options are not
  // controllers; named hierarchies are not either.
  EXPECT_EQ(host.v1_mounts["memory"], dir_ + "/memory");
  EXPECT_EQ(host.v1_mounts["cpu"], dir_ + "/cpu,cpuacct");
  EXPECT_EQ(host.v1_mounts["cpuacct"], dir_ + "/cpu,cpuacct");
  EXPECT_EQ(host.v1_mounts.count("rw"), 0u);
  EXPECT_EQ(host.v1_mounts.count("name=systemd"), 0u);
  EXPECT_EQ(host.v2_mount, dir_ + "/unified");
  EXPECT_THAT(host.v2_controllers, ElementsAre("hugetlb"));
}

TEST_F(CgroupTest, DetectUnescapesMountPoints) {
  Write(dir_ + "/m", "cgroup /sys/fs/cgroup/my\\040memory cgroup rw,memory 0 0\n");
  ASSERT_OK_AND_ASSIGN(CgroupHost host, CgroupHost::Detect(dir_ + "/m"));
  EXPECT_EQ(host.v1_mounts["memory"], "/sys/fs/cgroup/my memory");
  EXPECT_THAT(CgroupHost::Detect(dir_ + "/missing").status(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(CgroupTest, PlanV1) {
  CgroupHost host = Hybrid();
  CgroupLimits limits{.memory_bytes = 300000001,
                      .cpu_quota_us = 50000,
                      .cpu_period_us = 100000,
                      .cpu_weight = 50,
                      .pids_max = 10,
                      .extra = {{"memory.swappiness", "0"}}};
  ASSERT_OK_AND_ASSIGN(CgroupPlan plan, PlanCgroups(host, CgroupVersion::kAuto, limits, "fcvm"));
  EXPECT_EQ(plan.version, CgroupVersion::kV1);
  // Memory rounded up to a page; period before quota; weight as shares.
  EXPECT_THAT(plan.settings,
              ElementsAre(Pair("memory.limit_in_bytes", "300003328"), Pair("cpu.cfs_period_us", "100000"),
                          Pair("cpu.cfs_quota_us", "50000"), Pair("cpu.shares", "512"),
                          Pair("pids.max", "10"), Pair("memory.swappiness", "0")));
  EXPECT_THAT(plan.JailerArgs(),
              ElementsAre("--cgroup-version", "1", "--parent-cgroup", "fcvm", "--cgroup",
                          "memory.limit_in_bytes=300003328", "--cgroup", "cpu.cfs_period_us=100000",
                          "--cgroup", "cpu.cfs_quota_us=50000", "--cgroup", "cpu.shares=512", "--cgroup",
                          "pids.max=10", "--cgroup", "memory.swappiness=0"));
  EXPECT_THAT(
      VmCgroupDirs(host, plan, "vm1"),
      ElementsAre(dir_ + "/cpu,cpuacct/fcvm/vm1", dir_ + "/memory/fcvm/vm1", dir_ + "/pids/fcvm/vm1"));
}

TEST_F(CgroupTest, PlanV2) {
  CgroupHost host = PureV2();
  CgroupLimits limits{.memory_bytes = 1 << 30,
                      .cpu_quota_us = 200000,
                      .cpu_period_us = 100000,
                      .cpu_weight = 50,
                      .pids_max = 10};
  ASSERT_OK_AND_ASSIGN(CgroupPlan plan, PlanCgroups(host, CgroupVersion::kAuto, limits, "fcvm/vms"));
  EXPECT_EQ(plan.version, CgroupVersion::kV2);
  EXPECT_THAT(plan.settings, ElementsAre(Pair("memory.max", "1073741824"), Pair("cpu.max", "200000 100000"),
                                         Pair("cpu.weight", "50"), Pair("pids.max", "10")));
  EXPECT_THAT(VmCgroupDirs(host, plan, "vm1"), ElementsAre(dir_ + "/v2/fcvm/vms/vm1"));
}

TEST_F(CgroupTest, AutoPicksV2OnlyWhenItHasEveryController) {
  CgroupHost host = Hybrid();
  ASSERT_OK_AND_ASSIGN(CgroupPlan huge,
                       PlanCgroups(host, CgroupVersion::kAuto, {.extra = {{"hugetlb.2MB.max", "0"}}}, "p"));
  EXPECT_EQ(huge.version, CgroupVersion::kV2);
  ASSERT_OK_AND_ASSIGN(CgroupPlan mem,
                       PlanCgroups(host, CgroupVersion::kAuto, {.memory_bytes = 1 << 30}, "p"));
  EXPECT_EQ(mem.version, CgroupVersion::kV1);
  // Nothing to set: no arguments, no directories.
  ASSERT_OK_AND_ASSIGN(CgroupPlan none, PlanCgroups(host, CgroupVersion::kAuto, {}, "p"));
  EXPECT_THAT(none.JailerArgs(), IsEmpty());
  EXPECT_THAT(VmCgroupDirs(host, none, "vm1"), IsEmpty());
}

TEST_F(CgroupTest, MissingControllersAreNamed) {
  CgroupHost host = Hybrid();
  EXPECT_THAT(PlanCgroups(host, CgroupVersion::kV2, {.memory_bytes = 1 << 30, .pids_max = 5}, "p").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr(absl::StrCat("cgroup v2 controllers memory, pids are not available in ",
                                              dir_, "/unified (it has: hugetlb)"))));
  EXPECT_THAT(PlanCgroups(host, CgroupVersion::kV1, {.extra = {{"hugetlb.2MB.max", "0"}}}, "p").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("cgroup v1 controller hugetlb is not available in the cgroup v1 mounts")));
  EXPECT_THAT(PlanCgroups(host, CgroupVersion::kAuto, {.extra = {{"nosuchctl.max", "1"}}}, "p").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("v2 controller nosuchctl"), HasSubstr("v1 controller nosuchctl"))));
  EXPECT_THAT(PlanCgroups(CgroupHost(), CgroupVersion::kV2, {.pids_max = 5}, "p").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no cgroup2 mount")));
}

TEST_F(CgroupTest, BadValuesAreInvalidArgument) {
  CgroupHost host = PureV2();
  auto plan = [&](const CgroupLimits& l, const std::string& parent = "fcvm") {
    return PlanCgroups(host, CgroupVersion::kAuto, l, parent).status();
  };
  EXPECT_THAT(plan({.cpu_quota_us = 999}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1000 us")));
  EXPECT_THAT(plan({.cpu_quota_us = 5000, .cpu_period_us = 2000000}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("period")));
  EXPECT_THAT(plan({.cpu_weight = 10001}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weight")));
  EXPECT_THAT(plan({.extra = {{"noformat", "1"}}}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(plan({.extra = {{"../memory.max", "1"}}}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(plan({.extra = {{"memory.max", ""}}}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(plan({.extra = {{"memory.max", "1\n2"}}}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(plan({.extra = {{"memory.max", "a=b"}}}), StatusIs(absl::StatusCode::kInvalidArgument));
  for (const char* parent : {"", "/abs", "a/../b", "a//b", ".", "a b"}) {
    EXPECT_THAT(plan({.pids_max = 5}, parent), StatusIs(absl::StatusCode::kInvalidArgument)) << parent;
  }
}

TEST_F(CgroupTest, LimitsForGuest) {
  EXPECT_EQ(MinMemoryBytes(128), (uint64_t{128} << 20) + kVmmMemoryOverheadBytes);
  EXPECT_EQ(MinPids(2), 2 + kVmmBaseTasks + kVmmTaskMargin);
  EXPECT_OK(CheckLimitsForGuest({}, 1, 128));
  EXPECT_OK(CheckLimitsForGuest({.memory_bytes = MinMemoryBytes(128), .pids_max = MinPids(1)}, 1, 128));
  EXPECT_THAT(CheckLimitsForGuest({.memory_bytes = MinMemoryBytes(128) - 1}, 1, 128),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("memory limit"), HasSubstr(absl::StrCat(MinMemoryBytes(128))))));
  EXPECT_THAT(CheckLimitsForGuest({.pids_max = MinPids(4) - 1}, 4, 128),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pids limit")));
}

TEST_F(CgroupTest, ReadsLimitsBack) {
  CgroupHost host = Hybrid();
  CgroupLimits limits{.memory_bytes = 1 << 30,
                      .cpu_quota_us = 50000,
                      .cpu_period_us = 100000,
                      .cpu_weight = 33,
                      .pids_max = 10,
                      .extra = {{"memory.swappiness", "0"}}};
  ASSERT_OK_AND_ASSIGN(CgroupPlan plan, PlanCgroups(host, CgroupVersion::kV1, limits, "fcvm"));
  // What the kernel shows once the jailer wrote the values.
  Write(dir_ + "/memory/fcvm/vm1/memory.limit_in_bytes", "1073741824\n");
  Write(dir_ + "/memory/fcvm/vm1/memory.swappiness", "0\n");
  Write(dir_ + "/cpu,cpuacct/fcvm/vm1/cpu.cfs_quota_us", "50000\n");
  Write(dir_ + "/cpu,cpuacct/fcvm/vm1/cpu.cfs_period_us", "100000\n");
  Write(dir_ + "/cpu,cpuacct/fcvm/vm1/cpu.shares", "337\n");
  Write(dir_ + "/pids/fcvm/vm1/pids.max", "10\n");
  ASSERT_OK_AND_ASSIGN(CgroupLimits read, ReadVmCgroupLimits(host, plan, "vm1"));
  EXPECT_EQ(read.memory_bytes, limits.memory_bytes);
  EXPECT_EQ(read.cpu_quota_us, limits.cpu_quota_us);
  EXPECT_EQ(read.cpu_period_us, limits.cpu_period_us);
  EXPECT_EQ(read.cpu_weight, 33u);  // shares 337 -> weight 33
  EXPECT_EQ(read.pids_max, limits.pids_max);
  EXPECT_EQ(read.extra, limits.extra);
  // "max" and v1's unlimited read as 0.
  Write(dir_ + "/pids/fcvm/vm1/pids.max", "max\n");
  Write(dir_ + "/memory/fcvm/vm1/memory.limit_in_bytes", "9223372036854771712\n");
  ASSERT_OK_AND_ASSIGN(read, ReadVmCgroupLimits(host, plan, "vm1"));
  EXPECT_EQ(read.pids_max, 0u);
  EXPECT_EQ(read.memory_bytes, 0u);
  EXPECT_THAT(ReadVmCgroupLimits(host, plan, "vm2").status(), StatusIs(absl::StatusCode::kNotFound));
  Write(dir_ + "/pids/fcvm/vm1/pids.max", "lots\n");
  EXPECT_THAT(ReadVmCgroupLimits(host, plan, "vm1").status(), StatusIs(absl::StatusCode::kDataLoss));

  CgroupHost v2 = PureV2();
  ASSERT_OK_AND_ASSIGN(CgroupPlan plan2,
                       PlanCgroups(v2, CgroupVersion::kV2, {.cpu_quota_us = 20000}, "fcvm"));
  Write(dir_ + "/v2/fcvm/vm1/cpu.max", "20000 100000\n");
  ASSERT_OK_AND_ASSIGN(read, ReadVmCgroupLimits(v2, plan2, "vm1"));
  EXPECT_EQ(read.cpu_quota_us, 20000u);
  EXPECT_EQ(read.cpu_period_us, 100000u);
}

TEST_F(CgroupTest, RemoveVmCgroupsInEveryHierarchy) {
  CgroupHost host = Hybrid();
  for (const char* h : {"memory", "pids", "cpu,cpuacct", "unified", "systemd"}) {
    ASSERT_OK(MakeDirs(absl::StrCat(dir_, "/", h, "/fcvm/vm1"), 0755));
  }
  ASSERT_OK(MakeDirs(dir_ + "/memory/fcvm/vm2", 0755));
  ASSERT_OK(RemoveVmCgroups(host, "fcvm", "vm1"));
  struct stat st;
  for (const char* h : {"memory", "pids", "cpu,cpuacct", "unified"}) {
    EXPECT_NE(stat(absl::StrCat(dir_, "/", h, "/fcvm/vm1").c_str(), &st), 0) << h;
    EXPECT_EQ(stat(absl::StrCat(dir_, "/", h, "/fcvm").c_str(), &st), 0) << "parent stays: " << h;
  }
  EXPECT_EQ(stat((dir_ + "/memory/fcvm/vm2").c_str(), &st), 0) << "another VM's cgroup stays";
  // Nothing left: OK again. A cgroup that cannot go is an error naming it.
  EXPECT_OK(RemoveVmCgroups(host, "fcvm", "vm1"));
  Write(dir_ + "/memory/fcvm/vm2/file", "x");
  EXPECT_THAT(RemoveVmCgroups(host, "fcvm", "vm2"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(dir_ + "/memory/fcvm/vm2")));
  EXPECT_THAT(RemoveVmCgroups(host, "fcvm", ".."), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RemoveVmCgroups(host, "../x", "vm2"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fcvm::firecracker
