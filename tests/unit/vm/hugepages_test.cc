// Huge-page guests and memory merging in the manager, with fakes
// (tests/unit/vm/fake_env.h): the host pool is checked up front for runs and
// clones (count x guest memory), Firecracker is asked for "2M", snapshots
// record their page size, File clones of a huge-page snapshot are refused
// before anything starts, and --ksm's memory merging reaches every launch.

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/manager.h"
#include "lib/vm/record.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::Each;
using ::testing::ElementsAre;
using testing::FakeWorld;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint64_t k2M = 2 << 20;

class HugePagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<FakeWorld>();
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("vmlinux"),
                              "\x7f"
                              "ELF fake kernel"));
  }
  void TearDown() override { manager_.reset(); }

  void Start(bool memory_merge = false, uint32_t warm_pool = 0) {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.warm_pool_size = warm_pool;
    o.clone_timeout = absl::Seconds(10);
    o.memory_merge = memory_merge;
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
  }

  // The host's 2 MiB pool: `free` pages free, none reserved.
  void Pool(uint64_t free, uint64_t overcommit = 0) {
    absl::MutexLock lock(&world_->mu);
    world_->huge_pool = HugePagePool{.page_size = k2M, .total = 4096, .free = free, .overcommit = overcommit};
  }

  RunRequest Guest(const std::string& name, HugePages huge = HugePages::k2M, uint32_t mib = 128) {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = tmp_.Sub("vmlinux");
    r.config.memory_mib = mib;
    r.config.huge_pages = huge;
    return r;
  }

  int Launches() {
    absl::MutexLock lock(&world_->mu);
    return world_->launches;
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-vm-huge"};
  std::shared_ptr<FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(HugePagesTest, RunAsksFirecrackerForTwoMegabytePages) {
  Pool(1000);
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(Guest("huge")));
  EXPECT_EQ(vm.config.huge_pages, HugePages::k2M);
  ASSERT_OK(manager_->Run(Guest("small", HugePages::kNone)).status());
  absl::MutexLock lock(&world_->mu);
  EXPECT_THAT(world_->boot_huge_pages, ElementsAre("2M", ""));
}

TEST_F(HugePagesTest, RunChecksThePoolUpFront) {
  Pool(10);  // 128 MiB needs 64 pages
  Start();
  EXPECT_THAT(manager_->Run(Guest("huge")),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       ::testing::AllOf(HasSubstr("1 x 128 MiB need 64 pages of 2048 KiB"),
                                        HasSubstr("10 available"), HasSubstr("vm.nr_hugepages"))));
  EXPECT_EQ(Launches(), 0) << "refused before any process started";
  EXPECT_THAT(manager_->List({}), IsEmpty());
  // MemAvailable does not matter for a huge-page guest, the pool does.
  {
    absl::MutexLock lock(&world_->mu);
    world_->mem_available_mib = 1;
  }
  Pool(64);
  ASSERT_OK(manager_->Run(Guest("huge")).status());
}

TEST_F(HugePagesTest, OvercommitCountsAsAvailable) {
  Pool(0, /*overcommit=*/64);
  Start();
  ASSERT_OK(manager_->Run(Guest("huge")).status());
}

TEST_F(HugePagesTest, HostWithoutAPoolIsAFailedPrecondition) {
  Start();  // world_->huge_pool unset: no 2 MiB pool on this host
  EXPECT_THAT(manager_->Run(Guest("huge")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("huge pages 2M")));
  EXPECT_EQ(Launches(), 0);
}

TEST_F(HugePagesTest, OddMemorySizeIsRefused) {
  Pool(1000);
  Start();
  EXPECT_THAT(manager_->Run(Guest("huge", HugePages::k2M, 129)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("multiple of 2")));
}

TEST_F(HugePagesTest, SnapshotRecordsItsPageSize) {
  Pool(1000);
  Start();
  ASSERT_OK(manager_->Run(Guest("huge")).status());
  ASSERT_OK(manager_->Run(Guest("small", HugePages::kNone)).status());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo huge, manager_->CreateSnapshot({.vm_ref = "huge", .name = "h"}));
  ASSERT_OK_AND_ASSIGN(SnapshotInfo small, manager_->CreateSnapshot({.vm_ref = "small", .name = "s"}));
  EXPECT_EQ(huge.memory_page_size, k2M);
  EXPECT_EQ(huge.config.huge_pages, HugePages::k2M);
  EXPECT_EQ(small.memory_page_size, 4096u);
  // In the store's record, so a restarted fcvmd knows it too.
  ASSERT_OK_AND_ASSIGN(std::string meta, ReadFile(huge.path + "/meta.json"));
  EXPECT_THAT(meta, HasSubstr("\"memory_page_size\": 2097152"));
  manager_.reset();
  Start();
  ASSERT_OK_AND_ASSIGN(SnapshotInfo again, manager_->GetSnapshot("h"));
  EXPECT_EQ(again.memory_page_size, k2M);
}

TEST_F(HugePagesTest, RecordsWithoutThePageSizeFallBackToTheConfig) {
  storage::SnapshotRecord r;
  VmConfig c;
  EXPECT_EQ(SnapshotPageSize(r, c), 4096u);
  c.huge_pages = HugePages::k2M;
  EXPECT_EQ(SnapshotPageSize(r, c), k2M);
  r.memory_page_size = 4096;
  EXPECT_EQ(SnapshotPageSize(r, c), 4096u) << "the record wins";
  // The config's JSON keeps the choice; older configs without it are small.
  ASSERT_OK_AND_ASSIGN(VmConfig back, ConfigFromJson(ConfigToJson(c)));
  EXPECT_EQ(back.huge_pages, HugePages::k2M);
  ASSERT_OK_AND_ASSIGN(VmConfig old, ConfigFromJson(R"({"kernel_path": "/k", "memory_mib": 64})"));
  EXPECT_EQ(old.huge_pages, HugePages::kNone);
}

TEST_F(HugePagesTest, ClonesGoThroughThePageServerAndFileIsRefused) {
  Pool(1000);
  Start();
  ASSERT_OK(manager_->Run(Guest("huge")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "huge", .name = "golden"}).status());
  int launches = Launches();

  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden", .count = 2, .backend = MemoryBackend::kFile}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("snapshot golden"), HasSubstr("2048 KiB huge pages"),
                                        HasSubstr("UFFD"))));
  EXPECT_EQ(Launches(), launches) << "refused before any process started";

  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "golden", .count = 3}));
  ASSERT_EQ(clones.succeeded, 3u);
  for (const VmInfo& c : clones.clones) {
    EXPECT_EQ(c.config.huge_pages, HugePages::k2M) << c.name;
    EXPECT_EQ(c.memory_backend, MemoryBackend::kUffd);
  }
  absl::MutexLock lock(&world_->mu);
  EXPECT_THAT(world_->load_backends, Each(firecracker::MemBackend::kUffd));
  EXPECT_EQ(world_->load_backends.size(), 3u);
}

TEST_F(HugePagesTest, CloneChecksCountTimesGuestMemory) {
  Pool(1000);
  Start();
  ASSERT_OK(manager_->Run(Guest("huge")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "huge", .name = "golden"}).status());
  Pool(128);  // two clones' worth
  int launches = Launches();
  EXPECT_THAT(
      manager_->Clone({.snapshot_ref = "golden", .count = 3}),
      StatusIs(absl::StatusCode::kResourceExhausted,
               ::testing::AllOf(HasSubstr("3 x 128 MiB need 192 pages"), HasSubstr("128 available"))));
  EXPECT_EQ(Launches(), launches);
  EXPECT_EQ(manager_->List({.snapshot_ref = "golden"}).size(), 0u) << "no clone, no reserved name left";
  ASSERT_OK_AND_ASSIGN(CloneResult two, manager_->Clone({.snapshot_ref = "golden", .count = 2}));
  EXPECT_EQ(two.succeeded, 2u);
  EXPECT_EQ(two.clones[0].name, "golden-0") << "the refused request reserved no name";
}

TEST_F(HugePagesTest, SmallPageSnapshotsStillCloneWithFile) {
  Start();
  ASSERT_OK(manager_->Run(Guest("small", HugePages::kNone)).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "small", .name = "s"}).status());
  ASSERT_OK_AND_ASSIGN(CloneResult r,
                       manager_->Clone({.snapshot_ref = "s", .count = 1, .backend = MemoryBackend::kFile}));
  EXPECT_EQ(r.succeeded, 1u);
}

TEST_F(HugePagesTest, MemoryMergeReachesEveryLaunch) {
  Start(/*memory_merge=*/true, /*warm_pool=*/1);
  // A pooled process first (polled: the pool fills on its own thread).
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (manager_->warm_pool_ready() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));
  ASSERT_EQ(manager_->warm_pool_ready(), 1u);
  ASSERT_OK(manager_->Run(Guest("a", HugePages::kNone)).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "a", .name = "s"}).status());
  ASSERT_OK(manager_->Clone({.snapshot_ref = "s", .count = 3}).status());
  manager_.reset();  // the pool stops refilling
  absl::MutexLock lock(&world_->mu);
  EXPECT_GE(world_->pooled_launches, 1);
  EXPECT_GE(world_->launches_merged.size(), 4u);
  EXPECT_THAT(world_->launches_merged, Each(true));
}

TEST_F(HugePagesTest, NoMemoryMergeByDefault) {
  Start();
  ASSERT_OK(manager_->Run(Guest("a", HugePages::kNone)).status());
  absl::MutexLock lock(&world_->mu);
  EXPECT_THAT(world_->launches_merged, ElementsAre(false));
}

}  // namespace
}  // namespace fcvm::vm
