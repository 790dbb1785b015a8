// Issue 15 against the real Firecracker and the test guest: snapshots that
// refuse a host they cannot run on, per-clone metadata (MMDS) and per-clone
// vsock sockets. Skips without Firecracker or /dev/kvm.

#include <sys/stat.h>
#include <unistd.h>

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/vsock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/unix_socket.h"
#include "lib/firecracker/api_client.h"
#include "lib/firecracker/snapshot_compat.h"
#include "lib/vm/manager.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

struct ConsoleTicks {
  int ok = 0;
  int bad = 0;
  uint64_t first = 0;
  uint64_t last = 0;
  std::string first_bad;
};

ConsoleTicks ReadTicks(const std::string& console_log) {
  static const std::regex kTick("^FCVM-GUEST TICK ([0-9]+) (OK|BAD)( |$)");
  ConsoleTicks t;
  std::string text = ReadFile(console_log).value_or("");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string l(line);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    std::smatch m;
    if (!std::regex_search(l, m, kTick)) continue;
    uint64_t n = std::stoull(m[1]);
    if (t.first == 0) t.first = n;
    t.last = n;
    if (m[2] == "OK") {
      ++t.ok;
    } else if (t.bad++ == 0) {
      t.first_bad = l;
    }
  }
  return t;
}

// Waits until the console shows `ok` OK ticks (or a BAD one).
ConsoleTicks WaitTicks(const std::string& console_log, int ok, absl::Duration timeout = absl::Seconds(40)) {
  absl::Time deadline = absl::Now() + timeout;
  ConsoleTicks t;
  while (absl::Now() < deadline) {
    t = ReadTicks(console_log);
    if (t.bad > 0 || t.ok >= ok) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return t;
}

class IdentityE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    // fcvmd's umask (daemon/main.cc), which the jailed VMs' uids depend on.
    old_umask_ = umask(027);
    options_.state_dir = tmp_.path() + "/state";
    options_.firecracker_bin = e2e::FirecrackerPath();
    // Jailed, as fcvmd runs VMs, wherever the jailer is present
    // (FCVM_JAILER_BIN=/nonexistent runs the suite unjailed).
    if (e2e::MissingJailPrerequisite().empty()) options_.jailer_bin = e2e::JailerPath();
    options_.network_prefix = "fcvi";
    options_.network_pool = "10.212.0.0/16";
    options_.warm_pool_size = 0;
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(options_));
  }

  void TearDown() override {
    if (manager_ == nullptr) return;
    for (const VmInfo& v : manager_->List({})) (void)manager_->Delete(v.id, true, absl::ZeroDuration());
    manager_.reset();
    std::vector<std::string> left = e2e::Leftovers(tmp_.path(), "fcvi");
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
    umask(old_umask_);
  }

  void Restart() {
    manager_.reset();
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(options_));
  }

  RunRequest GuestRun(const std::string& name) {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = e2e::GuestPath();
    r.config.boot_args = e2e::kGuestBootArgs;
    r.config.memory_mib = e2e::kGuestMemMib;
    return r;
  }

  void EditMeta(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
    ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(dir + "/meta.json"));
    nlohmann::json j = nlohmann::json::parse(text);
    edit(j);
    ASSERT_OK(WriteFileAtomic(dir + "/meta.json", j.dump(2), 0600));
  }

  e2e::TempDir tmp_{"fcvm-ide2e"};
  ManagerOptions options_;
  std::unique_ptr<Manager> manager_;
  mode_t old_umask_ = 022;
};

// The VM's directory (console log, records).
std::string DirOf(const VmInfo& vm) { return vm.console_log_path.substr(0, vm.console_log_path.rfind('/')); }

// Where its Firecracker's API socket is on the host: in its chroot when
// jailed.
std::string ApiSocketOf(const VmInfo& vm) {
  return vm.jailed ? vm.jail.chroot + "/run/firecracker.socket" : DirOf(vm) + "/api.sock";
}

// Where its vsock's host socket must be: the relative "vsock.sock" resolved
// in its Firecracker's working directory, the chroot's root when jailed.
std::string VsockOf(const VmInfo& vm) {
  return vm.jailed ? vm.jail.chroot + "/vsock.sock" : DirOf(vm) + "/vsock.sock";
}

TEST_F(IdentityE2eTest, SnapshotRecordsItsHostAndRefusesAnotherOne) {
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(GuestRun("base")));
  ASSERT_GE(WaitTicks(vm.console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));
  ASSERT_OK_AND_ASSIGN(firecracker::SnapshotHost here, firecracker::ProbeHost());
  ASSERT_TRUE(snap.host_recorded);
  EXPECT_EQ(snap.host.firecracker_version, manager_->firecracker_version());
  // What the real vmstate's header says, and what the binary says it writes.
  ASSERT_OK_AND_ASSIGN(firecracker::Version format, firecracker::ReadVmstateFormat(snap.path + "/vmstate"));
  EXPECT_EQ(snap.host.snapshot_format, format.ToString());
  ASSERT_OK_AND_ASSIGN(firecracker::Version binary_format,
                       firecracker::ProbeSnapshotFormat(e2e::FirecrackerPath()));
  EXPECT_EQ(format.ToString(), binary_format.ToString());
  EXPECT_EQ(snap.host.cpu.vendor, here.cpu.vendor);
  EXPECT_EQ(snap.host.cpu.model, here.cpu.model);
  EXPECT_EQ(snap.host.cpu.flags, here.cpu.flags);
  EXPECT_EQ(snap.host.kernel_release, here.kernel_release);
  EXPECT_EQ(snap.host.page_size, here.page_size);
  ASSERT_OK(manager_->Delete("base", true, absl::ZeroDuration()).status());

  // Another CPU vendor in the record: refused before any Firecracker starts.
  const std::string other = here.cpu.vendor == "GenuineIntel" ? "AuthenticAMD" : "GenuineIntel";
  EditMeta(snap.path, [&](nlohmann::json& j) { j["host"]["cpu"]["vendor"] = other; });
  Restart();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden"}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("cannot be restored on this host"),
                             HasSubstr("CPU vendor: snapshot " + other + ", this host " + here.cpu.vendor))));
  EXPECT_TRUE(manager_->List({}).empty());
  // Another Firecracker minor release.
  EditMeta(snap.path, [&](nlohmann::json& j) {
    j["host"]["cpu"]["vendor"] = here.cpu.vendor;
    j["host"]["firecracker_version"] = "1.13.0";
  });
  Restart();
  EXPECT_THAT(
      manager_->Clone({.snapshot_ref = "golden"}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("Firecracker version: snapshot 1.13.0")));
  EXPECT_TRUE(manager_->List({}).empty());

  // Put back, it clones and the clone runs.
  EditMeta(snap.path,
           [&](nlohmann::json& j) { j["host"]["firecracker_version"] = snap.host.firecracker_version; });
  Restart();
  ASSERT_OK_AND_ASSIGN(CloneResult ok, manager_->Clone({.snapshot_ref = "golden"}));
  ASSERT_EQ(ok.succeeded, 1u) << ok.clones[0].error;
  ConsoleTicks t = WaitTicks(ok.clones[0].console_log_path, 1);
  EXPECT_EQ(t.bad, 0) << t.first_bad;
  EXPECT_GE(t.ok, 1);
}

// What a VM's own Firecracker says its MMDS holds (GET /mmds on its API
// socket, beside its console log).
nlohmann::json MmdsOf(const VmInfo& vm) {
  firecracker::ApiClient api(ApiSocketOf(vm));
  absl::StatusOr<std::string> body = api.GetMmds();
  EXPECT_OK(body.status()) << vm.id;
  return nlohmann::json::parse(body.value_or("{}"), nullptr, false);
}

TEST_F(IdentityE2eTest, EachCloneHasItsOwnMetadata) {
  if (access("/run/netns", F_OK) != 0 && geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces";
  RunRequest r = GuestRun("mbase");
  r.config.network.enabled = true;
  r.metadata_json = R"({"task": "parent-secret", "n": 1})";
  absl::StatusOr<VmInfo> base = manager_->Run(r);
  if (base.status().code() == absl::StatusCode::kUnavailable) GTEST_SKIP() << base.status();
  ASSERT_OK(base.status());
  nlohmann::json bm = MmdsOf(*base);
  EXPECT_EQ(bm.value("task", ""), "parent-secret");
  EXPECT_EQ(bm["fcvm"].value("vm_id", ""), base->id);
  EXPECT_EQ(bm["fcvm"]["network"].value("host_ip", ""), base->network.host_ip);
  // MMDS v2 by default: Firecracker reports the version it was configured with.
  firecracker::ApiClient base_api(ApiSocketOf(*base));
  ASSERT_OK_AND_ASSIGN(std::string vm_config, base_api.Call("GET", "/vm/config", ""));
  nlohmann::json vc = nlohmann::json::parse(vm_config, nullptr, false);
  EXPECT_EQ(vc["mmds-config"].value("version", ""), "V2") << vm_config;
  ASSERT_GE(WaitTicks(base->console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "mbase", .name = "msnap"}));

  CloneRequest c;
  c.snapshot_ref = "msnap";
  c.count = 8;
  c.parallelism = 4;
  c.metadata_json = R"({"task": "child"})";
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone(c));
  ASSERT_EQ(clones.succeeded, 8u) << clones.clones[0].error;
  std::set<std::string> ids, addresses;
  for (uint32_t i = 0; i < clones.clones.size(); ++i) {
    const VmInfo& v = clones.clones[i];
    nlohmann::json m = MmdsOf(v);
    SCOPED_TRACE(m.dump());
    EXPECT_EQ(m.value("task", ""), "child");
    EXPECT_FALSE(m.contains("n")) << "the parent's metadata leaked into clone " << v.name;
    ASSERT_TRUE(m.contains("fcvm"));
    EXPECT_EQ(m["fcvm"].value("vm_id", ""), v.id);
    EXPECT_EQ(m["fcvm"].value("name", ""), v.name);
    EXPECT_EQ(m["fcvm"].value("snapshot_id", ""), snap.id);
    EXPECT_EQ(m["fcvm"].value("clone_index", -1), static_cast<int>(i));
    EXPECT_EQ(m["fcvm"]["network"].value("host_ip", ""), v.network.host_ip);
    ids.insert(m["fcvm"].value("vm_id", ""));
    addresses.insert(m["fcvm"]["network"].value("host_ip", ""));
  }
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_EQ(addresses.size(), 8u);
  // The clones were resumed after their metadata went in, and run.
  for (const VmInfo& v : clones.clones) {
    ConsoleTicks t = WaitTicks(v.console_log_path, 1);
    EXPECT_EQ(t.bad, 0) << t.first_bad;
    EXPECT_GE(t.ok, 1) << v.name;
  }

  // metadata set replaces the caller's keys of one clone; fcvm's stay.
  const VmInfo& first = clones.clones[0];
  ASSERT_OK_AND_ASSIGN(std::string doc, manager_->SetMetadata(first.name, R"({"task": "changed"})"));
  nlohmann::json now = MmdsOf(first);
  EXPECT_EQ(now.value("task", ""), "changed");
  EXPECT_EQ(now["fcvm"].value("clone_index", -1), 0);
  EXPECT_EQ(now["fcvm"].value("vm_id", ""), first.id);
  EXPECT_EQ(nlohmann::json::parse(doc), now);
  ASSERT_OK_AND_ASSIGN(std::string got, manager_->GetMetadata(first.id));
  EXPECT_EQ(nlohmann::json::parse(got), now);
  EXPECT_EQ(MmdsOf(clones.clones[1]).value("task", ""), "child");
  EXPECT_THAT(manager_->SetMetadata(first.id, R"({"fcvm": 1})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"fcvm\"")));
  EXPECT_THAT(manager_->SetMetadata(first.id, "[1]"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(MmdsOf(first).value("task", ""), "changed");
}

// The pid of the process listening on the Unix socket at `path`: SO_PEERCRED
// of a connection gives the listener's credentials as of its listen(). (Not
// /proc/net/unix: it shows the path as bound, here the relative "vsock.sock".)
int ListenerPid(const std::string& path) {
  absl::StatusOr<UniqueFd> sock = ConnectUnix(path);
  if (!sock.ok()) return -1;
  absl::StatusOr<PeerCredentials> peer = GetPeerCredentials(sock->get());
  return peer.ok() ? peer->pid : -1;
}

TEST_F(IdentityE2eTest, EachCloneHasItsOwnVsockSocket) {
  RunRequest r = GuestRun("vbase");
  r.config.vsock.enabled = true;
  ASSERT_OK_AND_ASSIGN(VmInfo base, manager_->Run(r));
  EXPECT_EQ(base.vsock_path, VsockOf(base)) << (base.jailed ? "jailed" : "unjailed");
  EXPECT_EQ(ListenerPid(base.vsock_path), base.pid) << base.vsock_path;
  ASSERT_GE(WaitTicks(base.console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "vbase", .name = "vsnap"}));
  EXPECT_TRUE(snap.config.vsock.enabled);

  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "vsnap", .count = 3}));
  ASSERT_EQ(clones.succeeded, 3u) << clones.clones[0].error;
  std::set<std::string> paths;
  for (const VmInfo& c : clones.clones) {
    EXPECT_EQ(c.jailed, base.jailed);
    EXPECT_EQ(c.vsock_path, VsockOf(c));
    ASSERT_OK_AND_ASSIGN(VmInfo got, manager_->Get(c.id));
    EXPECT_EQ(got.vsock_path, c.vsock_path) << "GetVm reports it";
    struct stat st;
    ASSERT_EQ(stat(c.vsock_path.c_str(), &st), 0) << c.vsock_path;
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    if (c.jailed) {
      EXPECT_EQ(st.st_uid, c.jail.uid) << "bound by the clone's jailed Firecracker";
    }
    EXPECT_EQ(ListenerPid(c.vsock_path), c.pid) << c.vsock_path << " is not clone " << c.name << "'s";
    paths.insert(c.vsock_path);
    // The connection reaches this clone's Firecracker, which forwards it to
    // the guest; the test guest has no vsock driver, so no answer comes.
    absl::Time t = absl::Now();
    EXPECT_THAT(cli::VsockConnect(c.vsock_path, 52, absl::Milliseconds(500)).status(),
                StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("no answer from guest port 52")));
    EXPECT_GE(absl::Now() - t, absl::Milliseconds(450));
    ConsoleTicks ticks = WaitTicks(c.console_log_path, 1);
    EXPECT_EQ(ticks.bad, 0) << ticks.first_bad;
    EXPECT_GE(ticks.ok, 1);
  }
  EXPECT_EQ(paths.size(), 3u);
  EXPECT_FALSE(paths.count(base.vsock_path));
  EXPECT_THAT(cli::VsockConnect(tmp_.path() + "/nothing.sock", 52, absl::Seconds(1)),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fcvm::vm
