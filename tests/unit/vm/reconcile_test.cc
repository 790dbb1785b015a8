// Start-up reconcile: the decision table, and what the manager does with a
// state directory a previous fcvmd left (fakes for the processes).

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/core.h"
#include "lib/vm/manager.h"
#include "lib/vm/reconcile.h"
#include "lib/vm/record.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::testing::HasSubstr;

VmInfo Record(const std::string& id, VmState state, int pid = 0) {
  VmInfo v;
  v.id = id;
  v.name = id;
  v.state = state;
  v.pid = pid;
  v.created_at = absl::Now();
  return v;
}

TEST(DecideReconcile, EveryCase) {
  struct Case {
    std::optional<VmInfo> record;
    bool alive;
    ReconcileAction want;
    absl::Status pages = absl::OkStatus();
  };
  VmInfo uffd = Record("vm-c", VmState::kRunning, 9);
  uffd.snapshot_id = "snap-1";
  uffd.memory_backend = MemoryBackend::kUffd;
  VmInfo file = uffd;
  file.memory_backend = MemoryBackend::kFile;
  const std::vector<Case> cases = {
      {std::nullopt, false, ReconcileAction::kDiscard},
      {std::nullopt, true, ReconcileAction::kDiscard},
      {Record("vm-other", VmState::kRunning), true, ReconcileAction::kDiscard},  // record of another VM
      {Record("vm-c", VmState::kCreating, 9), true, ReconcileAction::kDiscard},
      {Record("vm-c", VmState::kCreating), false, ReconcileAction::kDiscard},
      {Record("vm-c", VmState::kStopping, 9), true, ReconcileAction::kDiscard},
      {Record("vm-c", VmState::kStopped), false, ReconcileAction::kKeep},
      {Record("vm-c", VmState::kFailed), false, ReconcileAction::kKeep},
      {Record("vm-c", VmState::kRunning, 9), false, ReconcileAction::kMarkStopped},
      {Record("vm-c", VmState::kPaused, 9), false, ReconcileAction::kMarkStopped},
      {Record("vm-c", VmState::kRunning, 9), true, ReconcileAction::kAdopt},
      {Record("vm-c", VmState::kPaused, 9), true, ReconcileAction::kAdopt},
      {uffd, true, ReconcileAction::kKill, absl::NotFoundError("pid 9 has no userfaultfd")},
      {uffd, true, ReconcileAction::kAdopt},  // the page server took it over
      {file, true, ReconcileAction::kAdopt},
  };
  for (const Case& c : cases) {
    ReconcileDecision d = DecideReconcile("vm-c", c.record, c.alive, c.pages);
    EXPECT_EQ(d.action, c.want) << (c.record ? StateName(c.record->state) : "no record")
                                << " alive=" << c.alive << ": got " << ReconcileActionName(d.action);
    EXPECT_FALSE(d.message.empty());
  }
  ReconcileDecision killed =
      DecideReconcile("vm-c", uffd, true, absl::NotFoundError("pid 9 has no userfaultfd"));
  EXPECT_EQ(killed.state, VmState::kStopped);
  EXPECT_THAT(killed.error,
              HasSubstr("page server could not take its memory over: pid 9 has no userfaultfd"));
  EXPECT_EQ(DecideReconcile("vm-c", Record("vm-c", VmState::kRunning, 9), false).state, VmState::kStopped);
}

class ReconcileTest : public ::testing::Test {
 protected:
  void SetUp() override { world_ = std::make_shared<testing::FakeWorld>(); }

  std::string VmDir(const std::string& id) { return tmp_.Sub("state/vms/") + id; }

  void Leave(const VmInfo& v) {
    ASSERT_OK(MakeDirs(VmDir(v.id), 0700));
    ASSERT_OK(WriteFileAtomic(VmDir(v.id) + "/vm.json", RecordToJson(v)));
  }

  void Start() {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.warm_pool_size = 0;
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
  }

  bool Exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-reconcile"};
  std::shared_ptr<testing::FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(ReconcileTest, WhatAPreviousFcvmdLeft) {
  Leave(Record("vm-alive", VmState::kRunning, 4001));
  Leave(Record("vm-gone", VmState::kRunning, 4002));
  VmInfo uffd = Record("vm-uffd", VmState::kRunning, 4003);
  uffd.snapshot_id = "snap-x";
  Leave(uffd);
  Leave(Record("vm-half", VmState::kCreating, 4004));
  Leave(Record("vm-old", VmState::kFailed));
  ASSERT_OK(MakeDirs(VmDir("vm-norecord"), 0700));
  {
    absl::MutexLock lock(&world_->mu);
    world_->running = {{4001, VmDir("vm-alive")},
                       {4003, VmDir("vm-uffd")},
                       {4004, VmDir("vm-half")},
                       {4005, VmDir("vm-norecord")},
                       {4006, VmDir("vm-deleted")}};  // its directory is gone
  }
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo alive, manager_->Get("vm-alive"));
  EXPECT_EQ(alive.state, VmState::kRunning);
  EXPECT_EQ(alive.pid, 4001);
  ASSERT_OK_AND_ASSIGN(VmInfo gone, manager_->Get("vm-gone"));
  EXPECT_EQ(gone.state, VmState::kStopped);
  EXPECT_THAT(gone.error, HasSubstr("exited while fcvmd was not running"));
  ASSERT_OK_AND_ASSIGN(VmInfo killed, manager_->Get("vm-uffd"));
  EXPECT_EQ(killed.state, VmState::kStopped);
  EXPECT_THAT(manager_->Get("vm-half"), ::fcvm::testing::StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(Exists(VmDir("vm-half")));
  EXPECT_FALSE(Exists(VmDir("vm-norecord")));
  ASSERT_OK_AND_ASSIGN(VmInfo old, manager_->Get("vm-old"));
  EXPECT_EQ(old.state, VmState::kFailed);
  {
    absl::MutexLock lock(&world_->mu);
    // vm-uffd, vm-half, vm-norecord and the one without a directory were
    // killed; vm-alive was adopted.
    EXPECT_EQ(world_->kills, 4);
    EXPECT_EQ(world_->alive, 1);
  }

  // Every decision reaches a subscriber that connects afterwards (before,
  // reconcile ran before anyone could subscribe and its events were lost).
  std::vector<Event> seen;
  uint64_t t = manager_->Subscribe([&](const Event& e) { seen.push_back(e); }, 0);
  manager_->Unsubscribe(t);
  int reconcile_events = 0;
  for (const Event& e : seen) reconcile_events += e.kind == EventKind::kReconcile ? 1 : 0;
  EXPECT_EQ(reconcile_events, 7);
}

// fcvmd stopped (a crash) while a snapshot or fork had the VM paused: the
// next fcvmd resumes it, never leaves it frozen. A VM recorded running is
// resumed as well (the crash may have come between Firecracker's pause and
// the record saying so; resuming a running VM is a no-op). A VM its user
// paused stays paused.
TEST_F(ReconcileTest, VmsPausedForASnapshotAreResumed) {
  VmInfo snap = Record("vm-snap", VmState::kPaused, 6001);
  snap.paused_for_snapshot = true;
  Leave(snap);
  Leave(Record("vm-user", VmState::kPaused, 6002));
  Leave(Record("vm-run", VmState::kRunning, 6003));
  {
    absl::MutexLock lock(&world_->mu);
    world_->running = {{6001, VmDir("vm-snap")}, {6002, VmDir("vm-user")}, {6003, VmDir("vm-run")}};
  }
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo resumed, manager_->Get("vm-snap"));
  EXPECT_EQ(resumed.state, VmState::kRunning);
  EXPECT_FALSE(resumed.paused_for_snapshot);
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(VmDir("vm-snap") + "/vm.json"));
  ASSERT_OK_AND_ASSIGN(VmInfo on_disk, RecordFromJson(text));
  EXPECT_EQ(on_disk.state, VmState::kRunning);
  EXPECT_FALSE(on_disk.paused_for_snapshot);
  ASSERT_OK_AND_ASSIGN(VmInfo user, manager_->Get("vm-user"));
  EXPECT_EQ(user.state, VmState::kPaused);
  ASSERT_OK_AND_ASSIGN(VmInfo run, manager_->Get("vm-run"));
  EXPECT_EQ(run.state, VmState::kRunning);
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->resumes, 2);  // vm-snap and vm-run, not vm-user
  EXPECT_EQ(world_->alive, 3);
}

// A snapshot pauses the VM with the pause marked as the snapshot's, and
// unmarks it when it resumes the VM.
TEST_F(ReconcileTest, ASnapshotMarksItsPauseInTheRecord) {
  VmInfo v = Record("vm-a", VmState::kRunning, 6101);
  Leave(v);
  {
    absl::MutexLock lock(&world_->mu);
    world_->running = {{6101, VmDir("vm-a")}};
  }
  Start();
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "vm-a", .name = "s"}).status());
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(VmDir("vm-a") + "/vm.json"));
  ASSERT_OK_AND_ASSIGN(VmInfo on_disk, RecordFromJson(text));
  EXPECT_EQ(on_disk.state, VmState::kRunning);
  EXPECT_FALSE(on_disk.paused_for_snapshot);
  VmInfo marked = on_disk;
  marked.state = VmState::kPaused;
  marked.paused_for_snapshot = true;
  ASSERT_OK_AND_ASSIGN(VmInfo round, RecordFromJson(RecordToJson(marked)));
  EXPECT_TRUE(round.paused_for_snapshot);
}

// A fork's Diff staged on a tmpfs by an fcvmd that then crashed is removed
// at start-up; a running fcvmd's (this process's) is not.
TEST(StagingTest, StagedSnapshotsOfGoneFcvmdsAreRemoved) {
  ::fcvm::testing::TempDir dir("staging");
  // A pid that is surely gone: a child that exited and was reaped.
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  ASSERT_GT(gone, 0);
  ASSERT_EQ(waitpid(gone, nullptr, 0), gone);
  const std::string stale = absl::StrCat(dir.path(), "/", kStagingPrefix, gone, "-snap-000000000001");
  // Another running process (the test's parent) stands for a running fcvmd;
  // this process's own pid for a crashed fcvmd that had the same pid.
  const std::string live = absl::StrCat(dir.path(), "/", kStagingPrefix, getppid(), "-snap-000000000002");
  const std::string same_pid = absl::StrCat(dir.path(), "/", kStagingPrefix, getpid(), "-snap-000000000003");
  const std::string other = dir.path() + "/unrelated";
  for (const std::string& d : {stale, live, same_pid, other}) {
    ASSERT_OK(MakeDirs(d, 0700));
    ASSERT_OK(WriteFileAtomic(d + "/memory", "m"));
  }
  RemoveStaleStaging(dir.path());
  EXPECT_NE(access(stale.c_str(), F_OK), 0) << "left by a crashed fcvmd";
  EXPECT_EQ(access(live.c_str(), F_OK), 0) << "a running fcvmd's";
  EXPECT_NE(access(same_pid.c_str(), F_OK), 0) << "a previous fcvmd with this pid";
  EXPECT_EQ(access(other.c_str(), F_OK), 0) << "not ours";
}

TEST_F(ReconcileTest, AdoptedVmCanBeDeleted) {
  Leave(Record("vm-alive", VmState::kRunning, 5001));
  {
    absl::MutexLock lock(&world_->mu);
    world_->running = {{5001, VmDir("vm-alive")}};
  }
  Start();
  ASSERT_OK(manager_->Pause("vm-alive").status());
  ASSERT_OK(manager_->Resume("vm-alive").status());
  ASSERT_OK(manager_->Delete("vm-alive", false, absl::Seconds(1)).status());
  EXPECT_FALSE(Exists(VmDir("vm-alive")));
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->alive, 0);
}

}  // namespace
}  // namespace fcvm::vm
