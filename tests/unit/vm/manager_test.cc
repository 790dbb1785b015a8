// The manager's logic with fakes (tests/unit/vm/fake_env.h): boot, clone,
// rollback, all-or-nothing, names under concurrency, cancellation, shutdown,
// snapshot deletion under a running clone request, bounds, events, records.
// No Firecracker, KVM or kernel feature needed: runs on any machine.

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/core.h"
#include "lib/vm/env.h"
#include "lib/vm/manager.h"
#include "lib/vm/record.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::IsOk;
using ::fcvm::testing::StatusIs;
using testing::FakeWorld;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAreArray;

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Collects events; Wait blocks until one matches (no sleeps).
class Events {
 public:
  void Add(const Event& e) {
    absl::MutexLock lock(&mu_);
    events_.push_back(e);
  }
  std::vector<Event> All() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  bool WaitFor(const std::function<bool(const Event&)>& match, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    struct Arg {
      const std::vector<Event>* events;
      const std::function<bool(const Event&)>* match;
    } arg{&events_, &match};
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](Arg* a) {
                                      for (const Event& e : *a->events)
                                        if ((*a->match)(e)) return true;
                                      return false;
                                    },
                                    &arg),
                                timeout);
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
};

class ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<FakeWorld>();
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("vmlinux"),
                              "\x7f"
                              "ELF fake kernel"));
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("data.img"), std::string(1 << 20, 'd')));
  }

  void Start(uint32_t warm_pool = 0, bool reconcile = true) {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.warm_pool_size = warm_pool;
    o.reconcile = reconcile;
    o.clone_timeout = absl::Seconds(10);
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
    token_ = manager_->Subscribe([this](const Event& e) { events_.Add(e); });
  }

  void TearDown() override { manager_.reset(); }

  RunRequest Guest(const std::string& name = "") {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = tmp_.Sub("vmlinux");
    r.config.memory_mib = 16;
    r.config.drives = {{"data", tmp_.Sub("data.img"), false, false}};
    return r;
  }

  // A running VM and a snapshot of it named `snap`.
  void MakeSnapshot(const std::string& snap = "golden") {
    ASSERT_OK(manager_->Run(Guest("base")).status());
    ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = snap}).status());
  }

  std::string VmsDir() const { return tmp_.Sub("state") + "/vms"; }

  std::vector<std::string> VmDirs() const {
    std::vector<std::string> out;
    for (const VmInfo& v : manager_->List({})) out.push_back(v.id);
    return out;
  }

  int Alive() {
    absl::MutexLock lock(&world_->mu);
    return world_->alive;
  }

  void AwaitPool(size_t n) {
    for (absl::Time until = absl::Now() + absl::Seconds(10);
         manager_->warm_pool_ready() < n && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    ASSERT_GE(manager_->warm_pool_ready(), n);
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-vm"};
  std::shared_ptr<FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
  Events events_;
  uint64_t token_ = 0;
};

TEST_F(ManagerTest, RunRecordsTheVmAndDeleteRemovesEverything) {
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(Guest("web")));
  EXPECT_EQ(vm.state, VmState::kRunning);
  EXPECT_EQ(vm.name, "web");
  EXPECT_GT(vm.pid, 0);
  EXPECT_THAT(vm.error, IsEmpty());
  ASSERT_OK_AND_ASSIGN(std::string record, ReadFile(VmsDir() + "/" + vm.id + "/vm.json"));
  ASSERT_OK_AND_ASSIGN(VmInfo from_disk, RecordFromJson(record));
  EXPECT_EQ(from_disk.state, VmState::kRunning);
  EXPECT_EQ(from_disk.pid, vm.pid);
  EXPECT_TRUE(Exists(VmsDir() + "/" + vm.id + "/drives/data"));
  EXPECT_EQ(Alive(), 1);

  ASSERT_OK(manager_->Delete("web", false, absl::Seconds(1)).status());
  EXPECT_FALSE(Exists(VmsDir() + "/" + vm.id));
  EXPECT_THAT(manager_->Get("web"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(Alive(), 0);
}

// A VM without drives (and its clones) gets no drives/ directory and no
// mount namespace: one inode and a namespace fewer per clone.
TEST_F(ManagerTest, VmsWithoutDrivesGetNoDrivesDirOrMountNamespace) {
  Start();
  RunRequest bare = Guest("bare");
  bare.config.drives.clear();
  ASSERT_OK_AND_ASSIGN(VmInfo no_drives, manager_->Run(bare));
  ASSERT_OK_AND_ASSIGN(VmInfo with_drives, manager_->Run(Guest("disk")));
  EXPECT_FALSE(Exists(VmsDir() + "/" + no_drives.id + "/drives"));
  EXPECT_TRUE(Exists(VmsDir() + "/" + with_drives.id + "/drives/data"));
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "bare", .name = "nodisk"}).status());
  CloneRequest req;
  req.snapshot_ref = "nodisk";
  req.count = 2;
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone(req));
  ASSERT_EQ(clones.clones.size(), 2u);
  for (const VmInfo& c : clones.clones) {
    ASSERT_EQ(c.state, VmState::kRunning) << c.error;
    EXPECT_TRUE(Exists(VmsDir() + "/" + c.id));
    EXPECT_FALSE(Exists(VmsDir() + "/" + c.id + "/drives"));
  }
  absl::MutexLock lock(&world_->mu);
  EXPECT_THAT(world_->launches_bind_mounts, ::testing::ElementsAre(0u, 1u, 0u, 0u));
}

TEST_F(ManagerTest, UnnamedVmIsNamedAfterItsId) {
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(Guest()));
  EXPECT_EQ(vm.name, vm.id);
}

// A record that cannot be written fails the request and leaves nothing
// (the full-disk case: before, the VM ran untracked after a restart).
TEST_F(ManagerTest, RecordWriteFailureFailsRunAndLeavesNothing) {
  Start();
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_records = true;
  }
  EXPECT_THAT(manager_->Run(Guest("web")), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(manager_->List({}), IsEmpty());
  EXPECT_EQ(Alive(), 0);
  EXPECT_THAT(VmDirs(), IsEmpty());
}

// The same for clones of both backends, from the warm pool or not: each
// clone fails RESOURCE_EXHAUSTED naming its record file, and nothing of it
// is left (process, directory, page-server listener); with all_or_nothing
// the request itself fails so.
TEST_F(ManagerTest, RecordWriteFailureFailsClonesAndLeavesNothing) {
  Start(/*warm_pool=*/1);
  MakeSnapshot();
  AwaitPool(1);
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_records = true;
  }
  for (MemoryBackend backend : {MemoryBackend::kFile, MemoryBackend::kUffd}) {
    ASSERT_OK_AND_ASSIGN(CloneResult r,
                         manager_->Clone({.snapshot_ref = "golden", .count = 2, .backend = backend}));
    EXPECT_EQ(r.succeeded, 0u);
    ASSERT_EQ(r.failed, 2u);
    for (const VmInfo& c : r.clones) {
      EXPECT_EQ(c.state, VmState::kFailed);
      EXPECT_THAT(c.error, HasSubstr("vm.json"));
      EXPECT_THAT(c.error, HasSubstr("No space left on device"));
    }
    EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden", .backend = backend, .all_or_nothing = true}),
                StatusIs(absl::StatusCode::kResourceExhausted));
  }
  ASSERT_EQ(manager_->List({}).size(), 1u);  // the base VM only
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_records = false;
  }
  manager_.reset();
  // Only the base VM's directory is left (its process released to run on).
  std::vector<std::string> dirs;
  if (DIR* d = opendir(VmsDir().c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') dirs.push_back(e->d_name);
    }
    closedir(d);
  }
  EXPECT_EQ(dirs.size(), 1u) << ::testing::PrintToString(dirs);
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->alive, 0);
  EXPECT_EQ(world_->released, 1);
  EXPECT_EQ(world_->listeners, 0);
}

TEST_F(ManagerTest, RunFailureUndoesEverythingAndReportsIt) {
  Start();
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_launch_at = 1;
  }
  EXPECT_THAT(manager_->Run(Guest("web")), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(manager_->List({}), IsEmpty());
  EXPECT_EQ(Alive(), 0);
  // The name is free again.
  ASSERT_OK(manager_->Run(Guest("web")).status());
  // Watchers saw the failed creation.
  bool failed = false;
  for (const Event& e : events_.All()) failed |= e.state == VmState::kFailed && e.kind == EventKind::kVmState;
  EXPECT_TRUE(failed);
}

TEST_F(ManagerTest, NamesAreUniqueUnderConcurrentClones) {
  Start();
  MakeSnapshot();
  // Three requests of four clones at once, each one blocked in the middle so
  // that they overlap for sure.
  world_->launch_gate.Close();
  std::vector<absl::StatusOr<CloneResult>> results(3, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      CloneRequest r;
      r.snapshot_ref = "golden";
      r.count = 4;
      r.parallelism = 2;
      results[i] = manager_->Clone(r);
    });
  }
  ASSERT_TRUE(world_->launch_gate.AwaitArrivals(3));
  world_->launch_gate.Open();
  for (std::thread& t : threads) t.join();
  std::set<std::string> names;
  for (auto& r : results) {
    ASSERT_OK(r.status());
    EXPECT_EQ(r->succeeded, 4u);
    for (const VmInfo& v : r->clones) EXPECT_TRUE(names.insert(v.name).second) << "duplicate " << v.name;
  }
  std::vector<std::string> want;
  for (int i = 0; i < 12; ++i) want.push_back(absl::StrCat("golden-", i));
  EXPECT_THAT(names, UnorderedElementsAreArray(want));
  // Every name resolves to exactly one VM.
  for (const std::string& n : names) EXPECT_OK(manager_->Get(n).status());
}

// A request that fails must release its own names only, never those another
// request in flight reserved.
TEST_F(ManagerTest, FailedRequestReleasesOnlyItsOwnNames) {
  Start();
  MakeSnapshot();
  world_->load_gate.Close();
  absl::StatusOr<CloneResult> first = absl::UnknownError("not run");
  std::thread t([&] { first = manager_->Clone({.snapshot_ref = "golden", .count = 2, .parallelism = 2}); });
  ASSERT_TRUE(world_->load_gate.AwaitArrivals(2));
  // Names golden-0 and golden-1 belong to the request in flight: an explicit
  // Run of one of them is refused.
  EXPECT_THAT(manager_->Run(Guest("golden-1")), StatusIs(absl::StatusCode::kAlreadyExists));
  // A second request whose every clone fails (the next launch fails).
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_launch_at = world_->launches + 1;
  }
  ASSERT_OK_AND_ASSIGN(CloneResult second, manager_->Clone({.snapshot_ref = "golden", .count = 1}));
  EXPECT_EQ(second.failed, 1u);
  EXPECT_EQ(second.clones[0].name, "golden-2");
  // The first request's names are still reserved.
  EXPECT_THAT(manager_->Run(Guest("golden-0")), StatusIs(absl::StatusCode::kAlreadyExists));
  world_->load_gate.Open();
  t.join();
  ASSERT_OK(first.status());
  EXPECT_EQ(first->succeeded, 2u);
  EXPECT_EQ(first->clones[0].name, "golden-0");
  EXPECT_EQ(first->clones[1].name, "golden-1");
  // golden-2 is free again: the next clone takes the name after the highest.
  ASSERT_OK_AND_ASSIGN(CloneResult third, manager_->Clone({.snapshot_ref = "golden", .count = 1}));
  EXPECT_EQ(third.clones[0].name, "golden-2");
}

TEST_F(ManagerTest, CloneUsesThePolicyThePageServerResolved) {
  Start();
  MakeSnapshot();
  int resumes_before;
  {
    absl::MutexLock lock(&world_->mu);
    resumes_before = world_->resumes;
  }
  // The first UFFD clone records, the next prefetches. Both are loaded
  // paused (their metadata goes in first); the recording one is resumed at
  // once, the prefetching one after the prefetch.
  ASSERT_OK_AND_ASSIGN(CloneResult a, manager_->Clone({.snapshot_ref = "golden"}));
  ASSERT_EQ(a.succeeded, 1u);
  EXPECT_EQ(a.clones[0].resolved_policy, ClonePolicy::kRecord);
  ASSERT_OK(manager_->Delete(a.clones[0].id, true, absl::ZeroDuration()).status());  // its recording ends
  ASSERT_OK_AND_ASSIGN(CloneResult b, manager_->Clone({.snapshot_ref = "golden"}));
  ASSERT_EQ(b.succeeded, 1u);
  EXPECT_EQ(b.clones[0].resolved_policy, ClonePolicy::kPrefetch);
  EXPECT_EQ(b.clones[0].state, VmState::kRunning);
  absl::MutexLock lock(&world_->mu);
  ASSERT_EQ(world_->loads_resumed.size(), 2u);
  EXPECT_FALSE(world_->loads_resumed[0]);
  EXPECT_FALSE(world_->loads_resumed[1]);
  EXPECT_EQ(world_->resumes - resumes_before, 2);
}

TEST_F(ManagerTest, FailedClonesAreRolledBackAndOthersKept) {
  Start();
  MakeSnapshot();
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_load_at = 2;
  }
  ASSERT_OK_AND_ASSIGN(
      CloneResult r,
      manager_->Clone(
          {.snapshot_ref = "golden", .count = 3, .backend = MemoryBackend::kFile, .parallelism = 1}));
  EXPECT_EQ(r.succeeded, 2u);
  EXPECT_EQ(r.failed, 1u);
  EXPECT_EQ(r.clones[1].state, VmState::kFailed);
  EXPECT_THAT(r.clones[1].error, HasSubstr("snapshot/load"));
  // The failed one left nothing: not listed, no directory, no process.
  EXPECT_EQ(manager_->List({.snapshot_ref = "golden"}).size(), 2u);
  EXPECT_THAT(manager_->Get(r.clones[1].name), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(Alive(), 3);  // base + two clones
}

TEST_F(ManagerTest, AllOrNothingLeavesNothingWhenOneFails) {
  Start();
  MakeSnapshot();
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_load_at = 3;
  }
  EXPECT_THAT(
      manager_->Clone({.snapshot_ref = "golden", .count = 4, .all_or_nothing = true, .parallelism = 1}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("all_or_nothing")));
  EXPECT_THAT(manager_->List({.snapshot_ref = "golden"}), IsEmpty());
  EXPECT_EQ(Alive(), 1);  // the base VM only
}

// A cancelled request (client gone, deadline passed) starts no more clones
// and deletes those it made. Before, a 100 ms client deadline still made all
// 12 clones.
TEST_F(ManagerTest, CancelledCloneStopsAndRollsBack) {
  Start();
  MakeSnapshot();
  int launches_before;
  {
    absl::MutexLock lock(&world_->mu);
    launches_before = world_->launches;
  }
  world_->load_gate.Close();
  CancelSource cancel;
  absl::StatusOr<CloneResult> result = absl::UnknownError("not run");
  std::thread t([&] {
    result = manager_->Clone({.snapshot_ref = "golden", .count = 12, .parallelism = 2}, cancel.token());
  });
  ASSERT_TRUE(world_->load_gate.AwaitArrivals(2));
  cancel.Cancel(absl::CancelledError("cancelled by the client"));
  world_->load_gate.Open();
  t.join();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(manager_->List({.snapshot_ref = "golden"}), IsEmpty());
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->launches - launches_before, 2) << "no clone may start after the cancellation";
  EXPECT_EQ(world_->alive, 1);
}

TEST_F(ManagerTest, ExpiredDeadlineIsDeadlineExceeded) {
  Start();
  MakeSnapshot();
  world_->load_gate.Close();
  CancelSource cancel(CancelToken(), absl::Now() + absl::Milliseconds(100));
  absl::StatusOr<CloneResult> result = absl::UnknownError("not run");
  std::thread t([&] { result = manager_->Clone({.snapshot_ref = "golden", .count = 4}, cancel.token()); });
  ASSERT_TRUE(world_->load_gate.AwaitArrivals(1));
  // The deadline passes while the load is stuck.
  while (!cancel.token().cancelled()) absl::SleepFor(absl::Milliseconds(5));
  world_->load_gate.Open();
  t.join();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(manager_->List({.snapshot_ref = "golden"}), IsEmpty());
}

// Disk copies in progress stop when the request is cancelled.
TEST_F(ManagerTest, CancelStopsDiskCopies) {
  Start();
  MakeSnapshot();
  world_->copy_gate.Close();
  CancelSource cancel;
  absl::StatusOr<CloneResult> result = absl::UnknownError("not run");
  std::thread t([&] { result = manager_->Clone({.snapshot_ref = "golden", .count = 4}, cancel.token()); });
  ASSERT_TRUE(world_->copy_gate.AwaitArrivals(1));
  cancel.Cancel(absl::CancelledError("cancelled by the client"));
  t.join();  // the copy gate never opens: the copies must notice the cancellation
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(manager_->List({.snapshot_ref = "golden"}), IsEmpty());
  EXPECT_EQ(Alive(), 1);
}

// fcvmd stopping cancels the operations in flight with "shutting down" and
// the manager's destructor returns once they are undone.
TEST_F(ManagerTest, ShutdownCancelsOperationsInFlight) {
  Start();
  MakeSnapshot();
  world_->copy_gate.Close();
  absl::StatusOr<CloneResult> result = absl::UnknownError("not run");
  std::thread t([&] { result = manager_->Clone({.snapshot_ref = "golden", .count = 16, .parallelism = 4}); });
  ASSERT_TRUE(world_->copy_gate.AwaitArrivals(4));
  absl::Time start = absl::Now();
  manager_.reset();
  t.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  EXPECT_EQ(Alive(), 0);  // the base VM is released, the clones were killed
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->released, 1);
}

TEST(Operations, ShutdownCancelsRunningAndRefusesNew) {
  Operations ops;
  CancelSource caller;
  ASSERT_OK_AND_ASSIGN(Operations::Op op, ops.Begin(caller.token()));
  EXPECT_OK(op.token().Check());
  std::thread stopper([&] { ops.Shutdown(absl::UnavailableError("fcvmd is shutting down")); });
  // The running operation sees the shutdown, and Shutdown waits for it.
  while (op.token().Check().ok()) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_THAT(op.token().Check(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  EXPECT_THAT(ops.Begin({}), StatusIs(absl::StatusCode::kUnavailable));
  op = Operations::Op();  // ends it
  stopper.join();
  // A caller's own cancellation reaches the operation too.
  Operations other;
  CancelSource client;
  ASSERT_OK_AND_ASSIGN(Operations::Op op2, other.Begin(client.token()));
  client.Cancel(absl::CancelledError("cancelled by the client"));
  EXPECT_THAT(op2.token().Check(), StatusIs(absl::StatusCode::kCancelled));
}

// Deleting a snapshot while a clone request uses it is refused (before, it
// succeeded and the clones failed later on the missing memory file).
TEST_F(ManagerTest, SnapshotCannotBeDeletedUnderARunningCloneRequest) {
  Start();
  MakeSnapshot();
  world_->load_gate.Close();
  absl::StatusOr<CloneResult> result = absl::UnknownError("not run");
  std::thread t([&] { result = manager_->Clone({.snapshot_ref = "golden", .count = 2}); });
  ASSERT_TRUE(world_->load_gate.AwaitArrivals(1));
  EXPECT_THAT(manager_->DeleteSnapshot("golden", /*force=*/true),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("being cloned")));
  world_->load_gate.Open();
  t.join();
  ASSERT_OK(result.status());
  EXPECT_EQ(result->succeeded, 2u);
  // Once the request is over: refused without force (it has clones), done with.
  EXPECT_THAT(manager_->DeleteSnapshot("golden", false), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(DeleteSnapshotResult d, manager_->DeleteSnapshot("golden", true));
  EXPECT_EQ(d.stopped_vm_ids.size(), 2u);
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ManagerTest, SnapshotKeepsTheVmHealthy) {
  Start();
  MakeSnapshot();
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Get("base"));
  EXPECT_EQ(base.state, VmState::kRunning);
  // "paused for snapshot" is an event, not an error of a healthy VM.
  EXPECT_THAT(base.error, IsEmpty());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo s, manager_->GetSnapshot("golden"));
  EXPECT_EQ(s.source_vm_id, base.id);
  EXPECT_EQ(s.firecracker_version, "1.14.2");
}

// Live fork: the first fork of a booted VM writes its whole memory; later
// ones a Diff layered on the last; a snapshot that fails after Firecracker
// reset the dirty log leaves no base, so the next fork is whole again. Forks
// load with the dirty log on and can be forked in turn.
TEST_F(ManagerTest, ForkLayersOnTheMemoryBaseAndForgetsItWhenASnapshotFails) {
  Start();
  ASSERT_OK(manager_->Run(Guest("src")).status());
  {
    absl::MutexLock lock(&world_->mu);
    ASSERT_FALSE(world_->boot_specs.empty());
    EXPECT_EQ(world_->boot_specs.back().machine.track_dirty_pages, std::optional<bool>(true));
  }
  ForkRequest req;
  req.vm_ref = "src";
  req.clone.count = 2;
  ASSERT_OK_AND_ASSIGN(ForkResult first, manager_->Fork(req));
  EXPECT_EQ(first.kind, "full");
  EXPECT_EQ(first.snapshot.parent_id, "");
  EXPECT_EQ(first.forks.succeeded, 2u);
  EXPECT_EQ(first.forks.clones[0].name, "src-fork-0");
  EXPECT_EQ(first.snapshot.labels.at("fcvm-fork-of"), first.snapshot.source_vm_id);

  req.clone.name_prefix = "second";
  ASSERT_OK_AND_ASSIGN(ForkResult second, manager_->Fork(req));
  EXPECT_EQ(second.kind, "diff");
  EXPECT_EQ(second.snapshot.parent_id, first.snapshot.id);
  EXPECT_EQ(second.snapshot.memory_layers, 2u);
  EXPECT_LT(second.written_bytes, second.snapshot.memory_bytes);
  {
    absl::MutexLock lock(&world_->mu);
    EXPECT_EQ(world_->snapshot_types.back(), firecracker::SnapshotType::kDiff);
    EXPECT_TRUE(world_->loads_tracked.back()) << "a fork must log its dirty pages to be forked again";
  }
  // A fork of a fork: three layers.
  req.vm_ref = "second-0";
  req.clone.name_prefix = "third";
  ASSERT_OK_AND_ASSIGN(ForkResult third, manager_->Fork(req));
  EXPECT_EQ(third.kind, "diff");
  EXPECT_EQ(third.snapshot.parent_id, second.snapshot.id);
  EXPECT_EQ(third.snapshot.memory_layers, 3u);
  // Layers stay while another lies on them.
  EXPECT_THAT(manager_->DeleteSnapshot(second.snapshot.id, /*force=*/true),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("memory layer")));

  // A snapshot that fails once Firecracker wrote (and reset its log)...
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_snapshot_at = static_cast<int>(world_->snapshot_types.size()) + 1;
  }
  EXPECT_FALSE(manager_->CreateSnapshot({.vm_ref = "src", .name = "broken"}).ok());
  ASSERT_OK_AND_ASSIGN(VmInfo src, manager_->Get("src"));
  EXPECT_EQ(src.memory_base, "");
  EXPECT_EQ(src.state, VmState::kRunning);
  // ...makes the next fork whole: a diff over the old base would miss pages.
  req.vm_ref = "src";
  req.clone.name_prefix = "after";
  ASSERT_OK_AND_ASSIGN(ForkResult after, manager_->Fork(req));
  EXPECT_EQ(after.kind, "full");
  ASSERT_OK_AND_ASSIGN(src, manager_->Get("src"));
  EXPECT_EQ(src.memory_base, after.snapshot.id);

  // File-backed forks are refused up front, and so are File clones of a layer.
  req.clone.backend = MemoryBackend::kFile;
  EXPECT_THAT(manager_->Fork(req), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("UFFD")));
  CloneRequest file;
  file.snapshot_ref = second.snapshot.id;
  file.backend = MemoryBackend::kFile;
  EXPECT_THAT(manager_->Clone(file),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("memory layer")));
}

// Concurrent forks of one VM are serialised on it: each diff lies on the
// snapshot the one before made, so the chain is exact whatever the order.
TEST_F(ManagerTest, ConcurrentForksOfOneVmChainTheirLayers) {
  Start();
  ASSERT_OK(manager_->Run(Guest("src")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "src", .name = "base"}).status());
  constexpr int kForks = 4;
  std::vector<absl::StatusOr<ForkResult>> results(kForks, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kForks; ++i) {
    threads.emplace_back([&, i] {
      ForkRequest req;
      req.vm_ref = "src";
      req.clone.name_prefix = absl::StrCat("c", i);
      results[i] = manager_->Fork(req);
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_OK_AND_ASSIGN(SnapshotInfo base, manager_->GetSnapshot("base"));
  std::map<std::string, std::string> parent_of;  // fork snapshot -> parent
  for (const auto& r : results) {
    ASSERT_OK(r.status());
    EXPECT_EQ(r->kind, "diff");
    EXPECT_EQ(r->forks.succeeded, 1u);
    parent_of[r->snapshot.id] = r->snapshot.parent_id;
  }
  // One chain base <- f1 <- f2 <- f3 <- f4: every parent is the base or
  // another fork's snapshot, and no two forks lie on the same one.
  std::set<std::string> parents;
  for (const auto& [id, parent] : parent_of) {
    EXPECT_TRUE(parent == base.id || parent_of.count(parent) == 1) << id << " lies on " << parent;
    EXPECT_TRUE(parents.insert(parent).second) << "two forks lie on " << parent;
  }
  ASSERT_OK_AND_ASSIGN(VmInfo src, manager_->Get("src"));
  EXPECT_EQ(parent_of.count(src.memory_base), 1u) << "the source's base is the last fork's snapshot";
  EXPECT_EQ(parents.count(src.memory_base), 0u);
}

TEST_F(ManagerTest, SnapshotReportsItsWorkingSet) {
  Start();
  MakeSnapshot();
  {
    absl::MutexLock lock(&world_->mu);
    world_->working_set_pages = 321;
  }
  ASSERT_OK_AND_ASSIGN(SnapshotInfo s, manager_->GetSnapshot("golden"));
  EXPECT_EQ(s.working_set_pages, 321u);
}

TEST_F(ManagerTest, CloneNetworkRules) {
  Start();
  MakeSnapshot();  // no network
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden", .network_enabled = true}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("has no network")));
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden", .publish = {{8080, 80, "tcp"}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot publish")));
  EXPECT_OK(manager_->Clone({.snapshot_ref = "golden", .network_enabled = false}).status());
}

TEST_F(ManagerTest, BoundsAreCheckedWithTheirLimitInTheMessage) {
  Start();
  RunRequest big = Guest("x");
  big.config.memory_mib = 2 * 1024 * 1024;
  EXPECT_THAT(manager_->Run(big), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("16-1048576")));
  RunRequest args = Guest("x");
  args.config.boot_args = std::string(3000, 'a');
  EXPECT_THAT(manager_->Run(args), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 2048")));
  RunRequest labels = Guest("x");
  for (int i = 0; i < 65; ++i) labels.labels[absl::StrCat("k", i)] = "v";
  EXPECT_THAT(manager_->Run(labels), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 64")));
  RunRequest huge = Guest("x");
  huge.labels["big"] = std::string(3500000, 'v');
  EXPECT_THAT(manager_->Run(huge), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 256")));
  RunRequest key = Guest("x");
  key.labels["-bad"] = "v";
  EXPECT_THAT(manager_->Run(key), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("start and end")));
  RunRequest ports = Guest("x");
  ports.config.network.publish = {{8080, 80, "tcp"}};
  EXPECT_THAT(manager_->Run(ports),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("need the network")));
  CloneRequest clone{.snapshot_ref = "golden", .count = 2000};
  EXPECT_THAT(manager_->Clone(clone), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1-1024")));
  EXPECT_THAT(manager_->List({}), IsEmpty());
}

TEST_F(ManagerTest, ProcessExitIsNoticedByTheSupervisor) {
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(Guest("web")));
  ASSERT_TRUE(testing::ExitFakeProcess(vm.pid, 3));
  ASSERT_TRUE(
      events_.WaitFor([&](const Event& e) { return e.vm_id == vm.id && e.state == VmState::kFailed; }));
  ASSERT_OK_AND_ASSIGN(VmInfo after, manager_->Get("web"));
  EXPECT_EQ(after.state, VmState::kFailed);
  EXPECT_THAT(after.error, HasSubstr("exit code 3"));
  EXPECT_EQ(after.pid, 0);
  // A stopped VM keeps its name until deleted.
  EXPECT_THAT(manager_->Run(Guest("web")), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK(manager_->Delete("web", true, absl::ZeroDuration()).status());
}

TEST_F(ManagerTest, EventsAreNumberedAndReplayedFromTheBacklog) {
  Start();
  ASSERT_OK(manager_->Run(Guest("a")).status());
  ASSERT_OK(manager_->Run(Guest("b")).status());
  std::vector<Event> seen;
  uint64_t t = manager_->Subscribe([&](const Event& e) { seen.push_back(e); }, 0);
  manager_->Unsubscribe(t);
  ASSERT_GE(seen.size(), 2u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].sequence, i + 1);
  // From a given sequence on.
  std::vector<Event> later;
  t = manager_->Subscribe([&](const Event& e) { later.push_back(e); }, seen.back().sequence - 1);
  manager_->Unsubscribe(t);
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].sequence, seen.back().sequence);
}

// What fcvmd leaves behind when it stops: UFFD and File clones and booted
// VMs are left running for the next fcvmd, also when they took a warm-pool
// process. Before, VMs in
// warm-pool processes were stopped ("ran in a warm-pool process").
TEST_F(ManagerTest, StopLeavesVmsFromTheWarmPoolRunning) {
  Start(/*warm_pool=*/1);
  AwaitPool(1);
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(Guest("base")));
  ASSERT_TRUE(base.timings.from_warm_pool);
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  ASSERT_OK_AND_ASSIGN(CloneResult uffd, manager_->Clone({.snapshot_ref = "golden"}));
  AwaitPool(1);
  ASSERT_OK_AND_ASSIGN(CloneResult file,
                       manager_->Clone({.snapshot_ref = "golden", .backend = MemoryBackend::kFile}));
  ASSERT_EQ(uffd.succeeded, 1u);
  ASSERT_EQ(file.succeeded, 1u);
  ASSERT_TRUE(file.clones[0].timings.from_warm_pool);
  std::string uffd_id = uffd.clones[0].id, file_id = file.clones[0].id;
  manager_.reset();
  // All three left running (released, not killed): the UFFD clone detached
  // from the page server, for the next fcvmd to take over.
  for (const std::string& id : {base.id, uffd_id, file_id}) {
    ASSERT_OK_AND_ASSIGN(VmInfo v, RecordFromJson(ReadFile(VmsDir() + "/" + id + "/vm.json").value_or("")));
    EXPECT_EQ(v.state, VmState::kRunning) << id;
    EXPECT_THAT(v.error, IsEmpty()) << id;
  }
  // The pool's unused process was killed.
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->released, 3);
  EXPECT_EQ(world_->detached, 1);
  EXPECT_EQ(world_->alive, 0);
}

// UFFD clones outlive the manager and the next one's page server takes them
// over; one whose userfaultfd cannot be taken is killed, never left frozen.
TEST_F(ManagerTest, UffdClonesOutliveTheManagerAndAreTakenOver) {
  Start(/*warm_pool=*/0);
  MakeSnapshot();
  ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone({.snapshot_ref = "golden", .count = 3}));
  ASSERT_EQ(r.succeeded, 3u);
  manager_.reset();
  {
    absl::MutexLock lock(&world_->mu);
    EXPECT_EQ(world_->detached, 3);
    EXPECT_EQ(world_->listeners, 0);
    EXPECT_EQ(world_->kills, 0);
  }
  const VmInfo& kept = r.clones[0];
  const VmInfo& lost = r.clones[1];     // its userfaultfd cannot be taken
  const VmInfo& no_copy = r.clones[2];  // no handshake copy in its directory
  {
    absl::MutexLock lock(&world_->mu);
    for (const VmInfo& v : r.clones) world_->running[v.pid] = VmsDir() + "/" + v.id;
    world_->uffd_pids = {kept.pid, lost.pid, no_copy.pid};
    world_->uffd_pids.erase(lost.pid);
  }
  // The real page server writes these at each clone's handshake.
  ASSERT_OK(WriteFileAtomic(VmsDir() + "/" + kept.id + "/uffd-handshake.json", "[kept]"));
  ASSERT_OK(WriteFileAtomic(VmsDir() + "/" + lost.id + "/uffd-handshake.json", "[lost]"));
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo k, manager_->Get(kept.id));
  EXPECT_EQ(k.state, VmState::kRunning);
  EXPECT_EQ(k.pid, kept.pid);
  ASSERT_OK_AND_ASSIGN(VmInfo l, manager_->Get(lost.id));
  EXPECT_EQ(l.state, VmState::kStopped);
  EXPECT_THAT(l.error, HasSubstr("page server could not take its memory over"));
  EXPECT_THAT(l.error, HasSubstr("no userfaultfd"));
  ASSERT_OK_AND_ASSIGN(VmInfo n, manager_->Get(no_copy.id));
  EXPECT_EQ(n.state, VmState::kStopped);
  EXPECT_THAT(n.error, HasSubstr("handshake"));
  {
    absl::MutexLock lock(&world_->mu);
    EXPECT_EQ(world_->adopted_handshakes[kept.pid], "[kept]");
    EXPECT_EQ(world_->adopted_handshakes.count(lost.pid), 0u);
    EXPECT_EQ(world_->kills, 2);
    EXPECT_EQ(world_->listeners, 1);
  }
  // The taken-over clone is like any other: deleting it ends its session.
  ASSERT_OK(manager_->Delete(kept.id, false, absl::Seconds(1)).status());
  absl::MutexLock lock(&world_->mu);
  EXPECT_EQ(world_->listeners, 0);
}

TEST_F(ManagerTest, WarmPoolServesClonesWithoutNetwork) {
  Start(/*warm_pool=*/2);
  MakeSnapshot();
  // Wait for the pool to be full (the base VM took one, maybe).
  for (absl::Time until = absl::Now() + absl::Seconds(10);
       manager_->warm_pool_ready() < 2 && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(manager_->warm_pool_ready(), 2u);
  ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone({.snapshot_ref = "golden", .count = 2}));
  ASSERT_EQ(r.succeeded, 2u);
  for (const VmInfo& v : r.clones) EXPECT_TRUE(v.timings.from_warm_pool) << v.name;
}

}  // namespace
}  // namespace fcvm::vm
