// The manager's building blocks on their own: the event log, the registry's
// names and snapshot uses, the executor, the warm pool and the record codec.

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/events.h"
#include "lib/vm/executor.h"
#include "lib/vm/record.h"
#include "lib/vm/registry.h"
#include "lib/vm/warm_pool.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

TEST(EventLog, NumbersKeepsAndReplaysInOrder) {
  EventLog log(3);
  std::vector<uint64_t> live;
  uint64_t t = log.Subscribe([&](const Event& e) { live.push_back(e.sequence); });
  for (int i = 0; i < 5; ++i) log.Publish(Event{});
  EXPECT_EQ(live, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  log.Unsubscribe(t);
  log.Publish(Event{});
  EXPECT_EQ(live.size(), 5u);
  EXPECT_EQ(log.last_sequence(), 6u);
  EXPECT_EQ(log.first_sequence(), 4u);  // only 3 kept
  std::vector<uint64_t> replayed;
  t = log.Subscribe([&](const Event& e) { replayed.push_back(e.sequence); }, 0);
  log.Publish(Event{});
  EXPECT_EQ(replayed, (std::vector<uint64_t>{4, 5, 6, 7}));
  log.Unsubscribe(t);
}

TEST(EventLog, ConcurrentPublishAndReplayHaveNoGapOrDuplicate) {
  EventLog log(100000);
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    while (!stop.load()) log.Publish(Event{});
  });
  while (log.last_sequence() < 100) std::this_thread::yield();
  std::vector<uint64_t> seen;
  uint64_t t = log.Subscribe([&](const Event& e) { seen.push_back(e.sequence); }, 0);
  while (seen.size() < 500) std::this_thread::yield();
  stop = true;
  publisher.join();
  log.Unsubscribe(t);
  for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], i + 1);
}

TEST(EventLog, CallbackMayUnsubscribe) {
  EventLog log;
  int calls = 0;
  uint64_t token = 0;
  token = log.Subscribe([&](const Event&) {
    ++calls;
    log.Unsubscribe(token);
  });
  log.Publish(Event{});
  log.Publish(Event{});
  EXPECT_EQ(calls, 1);
}

TEST(Executor, RunsEverythingAndTaskGroupWaits) {
  Executor ex("test", 3);
  std::atomic<int> done{0};
  TaskGroup group;
  for (int i = 0; i < 50; ++i) group.Run(ex, [&] { done.fetch_add(1); });
  group.Wait();
  EXPECT_EQ(done.load(), 50);
  ex.Stop();
  // After Stop, a group runs its tasks inline rather than losing them.
  TaskGroup late;
  late.Run(ex, [&] { done.fetch_add(1); });
  late.Wait();
  EXPECT_EQ(done.load(), 51);
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<testing::FakeWorld>();
    env_ = testing::MakeFakeEnv(world_);
    registry_ = std::make_unique<Registry>(tmp_.path(), env_.host.get(), &events_);
  }
  std::shared_ptr<VmEntry> Entry(const std::string& id, const std::string& name) {
    auto e = std::make_shared<VmEntry>();
    e->info.id = id;
    e->info.name = name;
    e->dir = tmp_.Sub(id);
    EXPECT_OK(MakeDirs(e->dir, 0700));
    return e;
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-registry"};
  std::shared_ptr<testing::FakeWorld> world_;
  Env env_;
  EventLog events_;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryTest, ConcurrentCloneNameReservationsNeverOverlap) {
  std::vector<std::thread> threads;
  absl::Mutex mu;
  std::vector<std::string> all;
  std::vector<Registry::Reservation> kept(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<Registry::Reservation> r = registry_->ReserveCloneNames("g", 16);
      ASSERT_OK(r.status());
      absl::MutexLock lock(&mu);
      for (const std::string& n : r->names()) all.push_back(n);
      kept[i] = *std::move(r);
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> unique(all.begin(), all.end());
  EXPECT_EQ(unique.size(), 128u);
  EXPECT_EQ(unique.count("g-0"), 1u);
  EXPECT_EQ(unique.count("g-127"), 1u);
  // Held names are refused to others; released ones are free again.
  EXPECT_THAT(registry_->ReserveName("g-5"), StatusIs(absl::StatusCode::kAlreadyExists));
  kept.clear();
  EXPECT_OK(registry_->ReserveName("g-5").status());
}

TEST_F(RegistryTest, InsertTakesTheReservedNameAndTransitionsAreChecked) {
  ASSERT_OK_AND_ASSIGN(Registry::Reservation r, registry_->ReserveName("web"));
  auto e = Entry("vm-1", "web");
  ASSERT_OK(registry_->Insert(e, r));
  EXPECT_THAT(registry_->ReserveName("web"), StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("taken")));
  // Not reserved by this reservation: refused.
  auto other = Entry("vm-2", "db");
  Registry::Reservation none;
  EXPECT_THAT(registry_->Insert(other, none), StatusIs(absl::StatusCode::kInternal));
  EXPECT_OK(registry_->Transition(*e, VmState::kRunning, "start"));
  EXPECT_THAT(registry_->Transition(*e, VmState::kCreating, "recreate"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("is running; cannot recreate")));
  EXPECT_OK(registry_->Transition(*e, VmState::kFailed, "fail", "it broke"));
  EXPECT_EQ(registry_->Info(*e).error, "it broke");
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(e->dir + "/vm.json"));
  ASSERT_OK_AND_ASSIGN(VmInfo record, RecordFromJson(text));
  EXPECT_EQ(record.state, VmState::kFailed);
  EXPECT_EQ(record.error, "it broke");
  EXPECT_EQ(events_.last_sequence(), 2u);
  registry_->Remove("vm-1");
  EXPECT_OK(registry_->ReserveName("web").status());
}

TEST_F(RegistryTest, SnapshotUseBlocksDeletionAndDeletionBlocksUse) {
  ASSERT_OK_AND_ASSIGN(Registry::SnapshotUse use, registry_->UseSnapshot("snap-1"));
  EXPECT_THAT(registry_->BeginSnapshotDeletion("snap-1", "golden"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("golden is being cloned by 1")));
  use = Registry::SnapshotUse();
  ASSERT_OK_AND_ASSIGN(Registry::SnapshotUse deleting, registry_->BeginSnapshotDeletion("snap-1", "golden"));
  EXPECT_THAT(registry_->UseSnapshot("snap-1"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("being deleted")));
  deleting = Registry::SnapshotUse();
  EXPECT_OK(registry_->UseSnapshot("snap-1").status());
}

TEST(Record, RoundTrip) {
  VmInfo v;
  v.id = "vm-1";
  v.name = "web";
  v.labels = {{"a", "b"}};
  v.state = VmState::kPaused;
  v.config.kernel_path = "/k";
  v.config.drives = {{"root", "/r", true, false}};
  v.config.network.enabled = true;
  v.snapshot_id = "snap-1";
  v.memory_backend = MemoryBackend::kFile;
  v.prefetch_policy = ClonePolicy::kPrefetch;
  v.resolved_policy = ClonePolicy::kRecord;
  v.pid = 42;
  v.timings.from_warm_pool = true;
  v.network.netns = "fcvm-vm-1";
  v.network.publish = {{8080, 80, "udp"}};
  v.created_at = absl::FromUnixNanos(1234567890);
  ASSERT_OK_AND_ASSIGN(VmInfo back, RecordFromJson(RecordToJson(v)));
  EXPECT_EQ(back.name, "web");
  EXPECT_EQ(back.state, VmState::kPaused);
  EXPECT_EQ(back.config.drives[0].drive_id, "root");
  EXPECT_EQ(back.memory_backend, MemoryBackend::kFile);
  EXPECT_EQ(back.prefetch_policy, ClonePolicy::kPrefetch);
  EXPECT_EQ(back.resolved_policy, ClonePolicy::kRecord);
  EXPECT_TRUE(back.timings.from_warm_pool);
  EXPECT_EQ(back.network.publish[0].protocol, "udp");
  EXPECT_EQ(back.created_at, v.created_at);
  EXPECT_THAT(RecordFromJson("{\"id\": 5}"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(RecordFromJson("[]"), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(WarmPool, KeepsSizeReplacesDeadAndStops) {
  ::fcvm::testing::TempDir tmp("fcvm-warm");
  auto world = std::make_shared<testing::FakeWorld>();
  Env env = testing::MakeFakeEnv(world);
  {
    WarmPool pool(env.vmms.get(), tmp.path(), 2, [](const std::string& id, const std::string& dir) {
      LaunchSpec s;
      s.id = id;
      s.vm_dir = dir;
      return s;
    });
    ASSERT_TRUE(pool.AwaitReady(2, absl::Seconds(10)));
    std::optional<WarmPool::Process> p = pool.Take();
    ASSERT_TRUE(p.has_value());
    EXPECT_TRUE(p->vmm->CheckRunning().ok());
    // A pooled process that died while pooled is skipped: the next Take
    // gives the one after it.
    ASSERT_TRUE(pool.AwaitReady(2, absl::Seconds(10)));
    pid_t second, third;
    {
      absl::MutexLock lock(&world->mu);
      ASSERT_EQ(world->pids.size(), 3u);
      second = world->pids[1];
      third = world->pids[2];
    }
    ASSERT_TRUE(testing::ExitFakeProcess(second, 0));
    std::optional<WarmPool::Process> q = pool.Take();
    ASSERT_TRUE(q.has_value());
    EXPECT_EQ(q->vmm->pid(), third);
    ASSERT_TRUE(pool.AwaitReady(2, absl::Seconds(10)));
    EXPECT_EQ(pool.misses(), 0u);
  }
  // Stopped: every pooled process killed (the two taken ones died with their
  // owners above).
  absl::MutexLock lock(&world->mu);
  EXPECT_EQ(world->alive, 0);
}

}  // namespace
}  // namespace fcvm::vm
