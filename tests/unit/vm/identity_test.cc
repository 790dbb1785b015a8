// Issue 15 with fakes (tests/unit/vm/fake_env.h): snapshot compatibility
// (what a snapshot records of its host, and clones refused up front on a host
// that differs where it matters), and per-VM metadata (MMDS).

#include <sys/stat.h>

#include <memory>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/vm/manager.h"
#include "lib/vm/validate.h"
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
    // No pool filling itself in the background: tests count launches.
    o.warm_pool_size = 0;
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

nlohmann::json Mmds(FakeWorld& world, pid_t pid) {
  absl::MutexLock lock(&world.mu);
  auto it = world.mmds.find(pid);
  return it == world.mmds.end() ? nlohmann::json() : nlohmann::json::parse(it->second);
}

TEST_F(IdentityTest, EachCloneGetsItsOwnMetadataBeforeItRuns) {
  Start();
  RunRequest r = Guest("base");
  r.metadata_json = R"({"secret": "parent's", "k": [1, 2]})";
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(r));
  nlohmann::json bm = Mmds(*world_, base.pid);
  EXPECT_EQ(bm["secret"], "parent's");
  EXPECT_EQ(bm["fcvm"]["vm_id"], base.id);
  EXPECT_EQ(bm["fcvm"]["name"], "base");
  EXPECT_FALSE(bm["fcvm"].contains("clone_index"));
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));

  CloneRequest c;
  c.snapshot_ref = "golden";
  c.count = 4;
  c.labels = {{"team", "a"}};
  c.metadata_json = R"({"task": "child"})";
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone(c));
  ASSERT_EQ(clones.succeeded, 4u);
  for (uint32_t i = 0; i < 4; ++i) {
    const VmInfo& v = clones.clones[i];
    EXPECT_EQ(v.state, VmState::kRunning);
    nlohmann::json m = Mmds(*world_, v.pid);
    EXPECT_EQ(m["task"], "child");
    EXPECT_FALSE(m.contains("secret")) << m.dump();
    EXPECT_EQ(m["fcvm"]["vm_id"], v.id);
    EXPECT_EQ(m["fcvm"]["name"], v.name);
    EXPECT_EQ(m["fcvm"]["clone_index"], i);
    EXPECT_EQ(m["fcvm"]["snapshot_id"], snap.id);
    EXPECT_EQ(m["fcvm"]["labels"]["team"], "a");
  }
  {
    absl::MutexLock lock(&world_->mu);
    EXPECT_EQ(world_->mmds_puts_while_running, 0) << "metadata went in after the vCPUs ran";
    for (bool resumed : world_->loads_resumed) EXPECT_FALSE(resumed);
  }
  // A clone asked to stay paused gets its metadata and stays paused.
  ASSERT_OK_AND_ASSIGN(CloneResult paused, manager_->Clone({.snapshot_ref = "golden", .stay_paused = true}));
  ASSERT_EQ(paused.succeeded, 1u);
  EXPECT_EQ(paused.clones[0].state, VmState::kPaused);
  EXPECT_EQ(Mmds(*world_, paused.clones[0].pid)["fcvm"]["vm_id"], paused.clones[0].id);
}

TEST_F(IdentityTest, RunConfiguresMmdsOnItsInterface) {
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo plain, manager_->Run(Guest("plain")));
  RunRequest net = Guest("net");
  net.config.network.enabled = true;
  ASSERT_OK_AND_ASSIGN(VmInfo with_net, manager_->Run(net));
  RunRequest v1 = Guest("v1");
  v1.config.network.enabled = true;
  v1.config.mmds_version = "V1";
  ASSERT_OK(manager_->Run(v1).status());
  RunRequest bad = Guest("bad");
  bad.config.mmds_version = "V3";
  EXPECT_THAT(manager_->Run(bad), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mmds_version")));

  absl::MutexLock lock(&world_->mu);
  ASSERT_EQ(world_->boot_specs.size(), 3u);
  // Without a network the guest cannot reach MMDS: no MMDS config, but the
  // store holds the VM's document (fcvmctl metadata get reads it).
  EXPECT_FALSE(world_->boot_specs[0].mmds_config.has_value());
  ASSERT_TRUE(world_->boot_specs[0].mmds_data.has_value());
  EXPECT_EQ(nlohmann::json::parse(*world_->boot_specs[0].mmds_data)["fcvm"]["vm_id"], plain.id);
  ASSERT_TRUE(world_->boot_specs[1].mmds_config.has_value());
  EXPECT_EQ(world_->boot_specs[1].mmds_config->version, "V2");
  EXPECT_THAT(world_->boot_specs[1].mmds_config->network_interfaces, ::testing::ElementsAre("eth0"));
  nlohmann::json m = nlohmann::json::parse(*world_->boot_specs[1].mmds_data);
  EXPECT_EQ(m["fcvm"]["network"]["host_ip"], with_net.network.host_ip);
  EXPECT_EQ(world_->boot_specs[2].mmds_config->version, "V1");
}

TEST_F(IdentityTest, BadMetadataIsRefusedBeforeAnythingStarts) {
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  int launches = Launches();
  const std::string too_big = absl::StrCat(R"({"x": ")", std::string(kMaxMetadataBytes, 'a'), R"("})");
  for (const std::string& bad : {std::string("{"), std::string("[1]"), std::string(R"("s")"),
                                 std::string(R"({"fcvm": {}})"), too_big}) {
    RunRequest r = Guest("x");
    r.metadata_json = bad;
    EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("metadata")));
    CloneRequest c;
    c.snapshot_ref = "golden";
    c.metadata_json = bad;
    EXPECT_THAT(manager_->Clone(c), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("metadata")));
  }
  EXPECT_EQ(Launches(), launches);
}

TEST_F(IdentityTest, MetadataGetAndSet) {
  Start();
  ASSERT_OK(manager_->Run(Guest("base")).status());
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "golden", .count = 2}));
  const VmInfo& second = clones.clones[1];
  ASSERT_OK_AND_ASSIGN(std::string doc, manager_->SetMetadata(second.name, R"({"task": "new"})"));
  nlohmann::json m = nlohmann::json::parse(doc);
  EXPECT_EQ(m["task"], "new");
  EXPECT_EQ(m["fcvm"]["clone_index"], 1) << "fcvm's keys as the clone got them";
  EXPECT_EQ(m["fcvm"]["vm_id"], second.id);
  EXPECT_EQ(Mmds(*world_, second.pid), m);
  ASSERT_OK_AND_ASSIGN(std::string got, manager_->GetMetadata(second.id));
  EXPECT_EQ(nlohmann::json::parse(got), m);
  EXPECT_FALSE(Mmds(*world_, clones.clones[0].pid).contains("task"));
  // Replaced, not merged.
  ASSERT_OK(manager_->SetMetadata(second.id, "{}").status());
  EXPECT_FALSE(Mmds(*world_, second.pid).contains("task"));

  EXPECT_THAT(manager_->SetMetadata(second.id, R"({"fcvm": 1})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fcvm")));
  EXPECT_THAT(manager_->GetMetadata("nope"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(manager_->Delete(second.id, true, absl::ZeroDuration()).status());
  EXPECT_THAT(manager_->GetMetadata(second.id), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(IdentityTest, VsockSocketIsRelativeSoEachCloneHasItsOwn) {
  Start();
  RunRequest r = Guest("base");
  r.config.vsock.enabled = true;
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(r));
  const std::string base_dir = base.console_log_path.substr(0, base.console_log_path.rfind('/'));
  EXPECT_EQ(base.vsock_path, base_dir + "/vsock.sock");
  {
    absl::MutexLock lock(&world_->mu);
    ASSERT_EQ(world_->boot_specs.size(), 1u);
    ASSERT_TRUE(world_->boot_specs[0].vsock.has_value());
    EXPECT_EQ(world_->boot_specs[0].vsock->uds_path, "vsock.sock")
        << "relative: resolved in each VM's directory";
    EXPECT_EQ(world_->boot_specs[0].vsock->guest_cid, kDefaultGuestCid);
  }
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}).status());
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "golden", .count = 3}));
  std::set<std::string> paths;
  for (const VmInfo& c : clones.clones) {
    EXPECT_EQ(c.vsock_path, c.console_log_path.substr(0, c.console_log_path.rfind('/')) + "/vsock.sock");
    EXPECT_TRUE(c.config.vsock.enabled);
    paths.insert(c.vsock_path);
  }
  EXPECT_EQ(paths.size(), 3u);
  // Kept in the record.
  Start();
  ASSERT_OK_AND_ASSIGN(VmInfo again, manager_->Get("base"));
  EXPECT_EQ(again.vsock_path, base.vsock_path);
  EXPECT_TRUE(again.config.vsock.enabled);

  RunRequest cid = Guest("cid");
  cid.config.vsock.enabled = true;
  cid.config.vsock.guest_cid = 2;
  EXPECT_THAT(manager_->Run(cid), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("guest_cid")));
  cid.config.vsock.enabled = false;
  cid.config.vsock.guest_cid = 7;
  EXPECT_THAT(manager_->Run(cid), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vsock.enabled")));
  ASSERT_OK_AND_ASSIGN(VmInfo plain, manager_->Run(Guest("plain")));
  EXPECT_EQ(plain.vsock_path, "");
}

// Jailed, Firecracker's working directory is its chroot's root: the relative
// socket is <chroot>/vsock.sock, each clone's in its own chroot.
TEST_F(IdentityTest, JailedVsockSocketIsInEachVmsChroot) {
  {
    absl::MutexLock lock(&world_->mu);
    world_->jailed = true;
    world_->jail_base = tmp_.Sub("jail");
  }
  Start();
  RunRequest r = Guest("jbase");
  r.config.vsock.enabled = true;
  r.config.vsock.guest_cid = 42;
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(r));
  ASSERT_TRUE(base.jailed);
  EXPECT_EQ(base.vsock_path, base.jail.chroot + "/vsock.sock");
  EXPECT_EQ(base.vsock_path, tmp_.Sub("jail") + "/firecracker/" + base.id + "/root/vsock.sock");
  {
    absl::MutexLock lock(&world_->mu);
    ASSERT_EQ(world_->boot_specs.size(), 1u);
    ASSERT_TRUE(world_->boot_specs[0].vsock.has_value());
    EXPECT_EQ(world_->boot_specs[0].vsock->uds_path, "vsock.sock");
    EXPECT_EQ(world_->boot_specs[0].vsock->guest_cid, 42u);
  }
  ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "jbase", .name = "jgolden"}).status());
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "jgolden", .count = 3}));
  ASSERT_EQ(clones.succeeded, 3u);
  std::set<std::string> paths;
  for (const VmInfo& c : clones.clones) {
    ASSERT_TRUE(c.jailed);
    EXPECT_EQ(c.vsock_path, c.jail.chroot + "/vsock.sock");
    EXPECT_EQ(c.config.vsock.guest_cid, 42u);
    ASSERT_OK_AND_ASSIGN(VmInfo got, manager_->Get(c.id));
    EXPECT_EQ(got.vsock_path, c.vsock_path);
    paths.insert(c.vsock_path);
  }
  paths.insert(base.vsock_path);
  EXPECT_EQ(paths.size(), 4u);
}

}  // namespace
}  // namespace fcvm::vm
