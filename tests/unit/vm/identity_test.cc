// Issue 15 with fakes (tests/unit/vm/fake_env.h): snapshot compatibility
// (what a snapshot records of its host, and clones refused up front on a host
// that differs where it matters).

#include <sys/stat.h>

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/manager.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using testing::FakeWorld;
using ::testing::HasSubstr;

class IdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<FakeWorld>();
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("vmlinux"),
                              "\x7f"
                              "ELF fake kernel"));
  }
  void TearDown() override { manager_.reset(); }

  void Start() {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.clone_timeout = absl::Seconds(10);
    manager_.reset();
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
  }

  RunRequest Guest(const std::string& name) {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = tmp_.Sub("vmlinux");
    r.config.memory_mib = 16;
    return r;
  }

  int Launches() {
    absl::MutexLock lock(&world_->mu);
    return world_->launches;
  }

  // Edits the snapshot's meta.json; the store reads it when the manager
  // starts.
  void EditMeta(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
    ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(dir + "/meta.json"));
    nlohmann::json j = nlohmann::json::parse(text);
    edit(j);
    ASSERT_OK(WriteFileAtomic(dir + "/meta.json", j.dump(2), 0600));
  }

  ::fcvm::testing::TempDir tmp_{"fcvm-id"};
  std::shared_ptr<FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(IdentityTest, SnapshotRecordsItsHost) {
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));
  EXPECT_TRUE(snap.host_recorded);
  EXPECT_EQ(snap.host.firecracker_version, "1.14.2");
  EXPECT_EQ(snap.host.snapshot_format, "8.0.0");  // read from the vmstate's header
  EXPECT_EQ(snap.host.cpu.vendor, "GenuineIntel");
  EXPECT_EQ(snap.host.cpu.family, 6);
  EXPECT_EQ(snap.host.cpu.model, 85);
  EXPECT_THAT(snap.host.cpu.flags, ::testing::ElementsAre("avx", "avx2", "pni"));
  EXPECT_EQ(snap.host.kernel_release, "6.1.0-fake");
  EXPECT_EQ(snap.host.page_size, 4096u);
  // Kept in meta.json, so it survives a restart.
  Start();
  ASSERT_OK_AND_ASSIGN(SnapshotInfo again, manager_->GetSnapshot("golden"));
  EXPECT_TRUE(again.host_recorded);
  EXPECT_EQ(again.host.cpu.model_name, "Fake Xeon");
  ASSERT_OK_AND_ASSIGN(CloneResult ok, manager_->Clone({.snapshot_ref = "golden"}));
  EXPECT_EQ(ok.succeeded, 1u);
}

TEST_F(IdentityTest, CloneOnAHostThatDiffersIsRefusedUpFront) {
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));
  const std::string dir = snap.path;

  // Another CPU vendor here: refused before any process starts.
  {
    absl::MutexLock lock(&world_->mu);
    world_->host.cpu.vendor = "AuthenticAMD";
  }
  Start();
  int launches = Launches();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("snapshot golden cannot be restored on this host"),
                             HasSubstr("CPU vendor: snapshot GenuineIntel, this host AuthenticAMD"))));
  EXPECT_EQ(Launches(), launches);
  {
    absl::MutexLock lock(&world_->mu);
    world_->host = FakeWorld::DefaultFakeHost();
  }

  // The record says another Firecracker minor release made it.
  EditMeta(dir, [](nlohmann::json& j) { j["host"]["firecracker_version"] = "1.13.1"; });
  Start();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("Firecracker version: snapshot 1.13.1, this host 1.14.2")));
  // ... or a CPU with a feature this one lacks.
  EditMeta(dir, [](nlohmann::json& j) {
    j["host"]["firecracker_version"] = "1.14.2";
    j["host"]["cpu"]["flags"].push_back("avx512f");
  });
  Start();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("this host lacks: avx512f")));
  // A record from before fcvm kept the host: its Firecracker version alone.
  EditMeta(dir, [](nlohmann::json& j) {
    j.erase("host");
    j["firecracker_version"] = "1.12.0";
  });
  Start();
  EXPECT_THAT(
      manager_->Clone({.snapshot_ref = "golden"}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("snapshot 1.12.0, this host 1.14.2")));
  ASSERT_OK_AND_ASSIGN(SnapshotInfo old, manager_->GetSnapshot("golden"));
  EXPECT_FALSE(old.host_recorded);
  // ... and the vmstate's own header, whatever the record says.
  EditMeta(dir, [](nlohmann::json& j) { j["firecracker_version"] = "1.14.2"; });
  {
    absl::MutexLock lock(&world_->mu);
    world_->snapshot_format = "7.0.0";  // this Firecracker writes and loads 7.x
  }
  Start();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("snapshot format: snapshot 8.0.0")));
  {
    absl::MutexLock lock(&world_->mu);
    world_->snapshot_format = "8.0.0";
  }
  Start();
  ASSERT_OK_AND_ASSIGN(CloneResult ok, manager_->Clone({.snapshot_ref = "golden"}));
  EXPECT_EQ(ok.succeeded, 1u);
}

}  // namespace
}  // namespace fcvm::vm
