// The manager with jailed VMs (fakes): each VM gets its own uid lease and
// chroot, its private files go into the chroot owned by its uid, limits are
// checked and applied, and everything is released on delete and reconciled
// at start-up.

#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/manager.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class JailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<testing::FakeWorld>();
    {
      absl::MutexLock lock(&world_->mu);
      world_->jailed = true;
      world_->jail_base = tmp_.Sub("jail");
    }
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("vmlinux"),
                              "\x7f"
                              "ELF fake kernel"));
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("data.img"), std::string(1 << 16, 'd')));
  }

  void Start(uint32_t uid_count = 100, uint32_t warm_pool = 0) {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.warm_pool_size = warm_pool;
    o.uid_base = 200000;
    o.uid_count = uid_count;
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
  }

  RunRequest Guest(const std::string& name) {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = tmp_.Sub("vmlinux");
    r.config.memory_mib = 16;
    r.config.drives = {{"data", tmp_.Sub("data.img"), false, false}};
    return r;
  }

  std::set<std::string> Jails() {
    absl::MutexLock lock(&world_->mu);
    return world_->jails;
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-jail"};
  std::shared_ptr<testing::FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(JailTest, EachVmHasItsOwnUidChrootAndLimits) {
  Start();
  EXPECT_EQ(manager_->isolation(), "jailer 1.7.0");
  ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Run(Guest("a")));
  ASSERT_OK_AND_ASSIGN(VmInfo b, manager_->Run(Guest("b")));
  for (const VmInfo* v : {&a, &b}) {
    EXPECT_TRUE(v->jailed);
    EXPECT_GE(v->jail.uid, 200000u);
    EXPECT_EQ(v->jail.gid, v->jail.uid);
    EXPECT_EQ(v->jail.chroot, tmp_.Sub("jail") + "/firecracker/" + v->id + "/root");
    // Defaults: guest memory + 32 MiB, a whole CPU per vCPU.
    EXPECT_EQ(v->jail.limits.memory_mib, 16u + 32u);
    EXPECT_EQ(v->jail.limits.cpu_percent, 100u);
    EXPECT_GT(v->jail.limits.pids_max, 0u);
    // The private disk copy is in the chroot, owned by the VM's uid.
    struct stat st;
    ASSERT_EQ(stat((v->jail.chroot + "/drives/data").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, v->jail.uid);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  EXPECT_NE(a.jail.uid, b.jail.uid);
  ASSERT_OK(manager_->Delete("a", false, absl::Seconds(1)).status());
  EXPECT_EQ(Jails(), std::set<std::string>{b.id});
  // The uid went back to the pool: the next VM may get it.
  ASSERT_OK_AND_ASSIGN(VmInfo c, manager_->Run(Guest("c")));
  EXPECT_NE(c.jail.uid, b.jail.uid);
}

TEST_F(JailTest, UidRangeExhaustedIsResourceExhausted) {
  Start(/*uid_count=*/2);
  ASSERT_OK(manager_->Run(Guest("a")).status());
  ASSERT_OK(manager_->Run(Guest("b")).status());
  EXPECT_THAT(manager_->Run(Guest("c")), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("uid")));
  // Nothing of the refused VM is left.
  EXPECT_EQ(Jails().size(), 2u);
  ASSERT_OK(manager_->Delete("a", true, absl::ZeroDuration()).status());
  EXPECT_OK(manager_->Run(Guest("c")).status());
}

TEST_F(JailTest, LimitsBelowTheGuestsNeedsAreRefused) {
  Start();
  RunRequest small = Guest("small");
  small.config.limits.memory_mib = 20;  // the guest alone has 16 MiB
  EXPECT_THAT(manager_->Run(small), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limits")));
  RunRequest pids = Guest("pids");
  pids.config.limits.pids_max = 1;
  EXPECT_THAT(manager_->Run(pids), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limits")));
  RunRequest weight = Guest("weight");
  weight.config.limits.cpu_weight = 20000;
  EXPECT_THAT(manager_->Run(weight), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cpu_weight")));
  RunRequest ok = Guest("ok");
  ok.config.limits = {.memory_mib = 256, .cpu_percent = 50, .cpu_weight = 200, .pids_max = 64};
  ASSERT_OK_AND_ASSIGN(VmInfo v, manager_->Run(ok));
  EXPECT_EQ(v.jail.limits.memory_mib, 256u);
  EXPECT_EQ(v.jail.limits.cpu_percent, 50u);
  EXPECT_EQ(v.jail.limits.cpu_weight, 200u);
  EXPECT_EQ(v.jail.limits.pids_max, 64u);
  EXPECT_THAT(Jails(), ::testing::SizeIs(1));
}

TEST_F(JailTest, ClonesGetTheirOwnJailAndTheSnapshotSaysJailed) {
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));
  EXPECT_TRUE(snap.jailed);
  ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone({.snapshot_ref = "golden", .count = 3}));
  ASSERT_EQ(r.succeeded, 3u);
  std::set<uint32_t> uids;
  for (const VmInfo& c : r.clones) {
    EXPECT_TRUE(c.jailed);
    uids.insert(c.jail.uid);
    // Its own vmstate and drive copy, owned by its uid.
    struct stat st;
    ASSERT_EQ(stat((c.jail.chroot + "/snapshot/vmstate").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, c.jail.uid);
    ASSERT_EQ(stat((c.jail.chroot + "/drives/data").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, c.jail.uid);
  }
  EXPECT_EQ(uids.size(), 3u);
  // Per-clone limits.
  ASSERT_OK_AND_ASSIGN(CloneResult big, manager_->Clone({.snapshot_ref = "golden",
                                                         .limits = ResourceLimits{.memory_mib = 512}}));
  ASSERT_EQ(big.succeeded, 1u);
  EXPECT_EQ(big.clones[0].jail.limits.memory_mib, 512u);
  ASSERT_OK(manager_->DeleteSnapshot("golden", /*force=*/true).status());
  EXPECT_EQ(Jails().size(), 1u);  // the base VM's
}

TEST_F(JailTest, NetworkTapBelongsToTheVmsUid) {
  Start();
  RunRequest r = Guest("net");
  r.config.network.enabled = true;
  ASSERT_OK_AND_ASSIGN(VmInfo v, manager_->Run(r));
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->tap_owners[v.id], v.jail.uid);
}

TEST_F(JailTest, WarmPoolProcessesAreJailedAndTakeTheClonesLimits) {
  Start(/*uid_count=*/100, /*warm_pool=*/2);
  ASSERT_OK(manager_->Run(Guest("base")).status());  // a jailed Run never takes a pooled process
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  for (absl::Time until = absl::Now() + absl::Seconds(10);
       manager_->warm_pool_ready() < 2 && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(manager_->warm_pool_ready(), 2u);
  ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone({.snapshot_ref = "golden"}));
  ASSERT_EQ(r.succeeded, 1u);
  EXPECT_TRUE(r.clones[0].timings.from_warm_pool);
  EXPECT_TRUE(r.clones[0].jailed);
  EXPECT_EQ(r.clones[0].jail.limits.memory_mib, 16u + 32u);
  manager_.reset();
  // The unused pooled process's jail and uid went with the pool; the clone
  // (in a pooled process) and the base VM are left running, jails and all.
  EXPECT_EQ(Jails().size(), 2u);
}

TEST_F(JailTest, AnUnjailedSnapshotIsNotClonedJailed) {
  {
    absl::MutexLock lock(&world_->mu);
    world_->jailed = false;
  }
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  manager_.reset();
  {
    absl::MutexLock lock(&world_->mu);
    world_->jailed = true;
    world_->running.clear();
  }
  Start();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("unjailed")));
}

TEST_F(JailTest, LimitsWithoutTheJailerAreRefused) {
  {
    absl::MutexLock lock(&world_->mu);
    world_->jailed = false;
  }
  Start();
  EXPECT_EQ(manager_->isolation(), "none");
  RunRequest limited = Guest("limited");
  limited.config.limits.pids_max = 64;
  EXPECT_THAT(manager_->Run(limited),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--no-jailer")));
  EXPECT_THAT(manager_->List({}), IsEmpty());
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(Guest("base")));
  EXPECT_FALSE(base.jailed);
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  CloneRequest c{.snapshot_ref = "golden"};
  c.limits = ResourceLimits{.memory_mib = 128};
  EXPECT_THAT(manager_->Clone(c), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("jail")));
  c.limits.reset();
  ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone(c));
  EXPECT_EQ(r.succeeded, 1u);
}

TEST_F(JailTest, ReconcileRemovesJailsOfGoneVmsAndFreesTheirUids) {
  Start(/*uid_count=*/2);
  ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Run(Guest("a")));
  ASSERT_OK(manager_->Run(Guest("b")).status());
  // fcvmd goes away leaving both running; then both die.
  manager_.reset();
  {
    absl::MutexLock lock(&world_->mu);
    world_->running.clear();
  }
  EXPECT_EQ(Jails().size(), 2u);
  Start(/*uid_count=*/2);
  EXPECT_THAT(Jails(), IsEmpty());
  ASSERT_OK_AND_ASSIGN(VmInfo gone, manager_->Get("a"));
  EXPECT_EQ(gone.state, VmState::kStopped);
  // Both uids are free again.
  EXPECT_OK(manager_->Run(Guest("c")).status());
  EXPECT_OK(manager_->Run(Guest("d")).status());
}

}  // namespace
}  // namespace fcvm::vm
