// The VM manager against the real Firecracker and the test guest: boot,
// snapshot, clone through the page server and the File backend, delete; bad
// input; nothing left behind. Skips without Firecracker or /dev/kvm.

#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/firecracker/cgroup.h"
#include "lib/vm/manager.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

struct ConsoleTicks {
  int ok = 0;
  int bad = 0;
  uint64_t first = 0;
  uint64_t last = 0;
  bool ready = false;
};

ConsoleTicks ReadTicks(const std::string& console_log) {
  static const std::regex kTick("^FCVM-GUEST TICK ([0-9]+) (OK|BAD)( |$)");
  ConsoleTicks t;
  std::string text = ReadFile(console_log).value_or("");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string l(line);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (l.rfind("FCVM-GUEST READY", 0) == 0) t.ready = true;
    std::smatch m;
    if (!std::regex_search(l, m, kTick)) continue;
    uint64_t n = std::stoull(m[1]);
    if (t.first == 0) t.first = n;
    t.last = n;
    (m[2] == "OK" ? t.ok : t.bad)++;
  }
  return t;
}

// Waits until the console shows `ok` OK ticks (and no BAD one).
ConsoleTicks WaitTicks(const std::string& console_log, int ok, absl::Duration timeout = absl::Seconds(30)) {
  absl::Time deadline = absl::Now() + timeout;
  ConsoleTicks t;
  while (absl::Now() < deadline) {
    t = ReadTicks(console_log);
    if (t.bad > 0 || t.ok >= ok) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return t;
}

class ManagerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    // fcvmd's umask (daemon/main.cc): files it makes are not for others
    // unless it says so, which the jailed VMs' uids depend on.
    old_umask_ = umask(027);
    ManagerOptions o;
    o.state_dir = tmp_.path() + "/state";
    o.firecracker_bin = e2e::FirecrackerPath();
    // Jailed, as fcvmd runs VMs, wherever the jailer is present.
    if (e2e::MissingJailPrerequisite().empty()) o.jailer_bin = e2e::JailerPath();
    // Apart from any real fcvmd on this host.
    o.network_prefix = "fcvt";
    o.network_pool = "10.211.0.0/16";
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o));
    ASSERT_OK(WriteFileAtomic(tmp_.path() + "/data.img", std::string(1 << 20, 'd')));
  }

  void TearDown() override {
    if (manager_ == nullptr) return;
    for (const VmInfo& v : manager_->List({})) (void)manager_->Delete(v.id, true, absl::ZeroDuration());
    manager_.reset();
    std::vector<std::string> left = e2e::Leftovers(tmp_.path());
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
    umask(old_umask_);
  }

  RunRequest GuestRun(const std::string& name) {
    RunRequest r;
    r.name = name;
    r.labels = {{"suite", "manager"}};
    r.config.kernel_path = e2e::GuestPath();
    r.config.boot_args = e2e::kGuestBootArgs;
    r.config.memory_mib = e2e::kGuestMemMib;
    r.config.drives = {{"data", tmp_.path() + "/data.img", false, false}};
    return r;
  }

  e2e::TempDir tmp_;
  std::unique_ptr<Manager> manager_;
  mode_t old_umask_ = 022;
};

TEST_F(ManagerE2eTest, BootSnapshotCloneDelete) {
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(GuestRun("base")));
  EXPECT_EQ(vm.state, VmState::kRunning);
  EXPECT_GT(vm.pid, 0);
  ConsoleTicks boot = WaitTicks(vm.console_log_path, 2);
  ASSERT_TRUE(boot.ready) << ReadFile(vm.console_log_path).value_or("");
  ASSERT_EQ(boot.bad, 0);
  ASSERT_GE(boot.ok, 2);

  ASSERT_OK_AND_ASSIGN(VmInfo paused, manager_->Pause("base"));
  EXPECT_EQ(paused.state, VmState::kPaused);
  EXPECT_THAT(manager_->Pause("base"), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(manager_->Resume("base").status());

  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "base", .name = "golden"}));
  EXPECT_EQ(snap.memory_bytes, uint64_t{e2e::kGuestMemMib} << 20);
  EXPECT_EQ(snap.memory_sha256.size(), 64u);
  ASSERT_OK_AND_ASSIGN(VmInfo after, manager_->Get("base"));
  EXPECT_EQ(after.state, VmState::kRunning) << "snapshot must resume by default";
  uint64_t snap_tick = ReadTicks(vm.console_log_path).last;

  // The first UFFD clone records the working set; the later ones prefetch it.
  CloneRequest uffd;
  uffd.snapshot_ref = "golden";
  uffd.count = 3;
  uffd.parallelism = 3;
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone(uffd));
  ASSERT_EQ(clones.succeeded, 3u) << (clones.clones.empty() ? "" : clones.clones[0].error);
  CloneRequest file = uffd;
  file.backend = MemoryBackend::kFile;
  file.count = 2;
  file.name_prefix = "filed";
  ASSERT_OK_AND_ASSIGN(CloneResult filed, manager_->Clone(file));
  ASSERT_EQ(filed.succeeded, 2u) << (filed.clones.empty() ? "" : filed.clones[0].error);

  std::vector<VmInfo> all = clones.clones;
  all.insert(all.end(), filed.clones.begin(), filed.clones.end());
  for (const VmInfo& c : all) {
    EXPECT_EQ(c.state, VmState::kRunning);
    EXPECT_EQ(c.snapshot_id, snap.id);
    ConsoleTicks t = WaitTicks(c.console_log_path, 2);
    EXPECT_EQ(t.bad, 0) << c.name << ": " << ReadFile(c.console_log_path).value_or("");
    EXPECT_GE(t.ok, 2) << c.name << ": " << ReadFile(c.console_log_path).value_or("");
    // A clone continues the snapshot's tick count; it does not reboot.
    EXPECT_FALSE(t.ready) << c.name << " rebooted";
    EXPECT_GE(t.first, snap_tick > 3 ? snap_tick - 3 : 0) << c.name;
  }
  EXPECT_EQ(clones.clones[0].name, "golden-0");
  EXPECT_EQ(filed.clones[1].name, "filed-1");

  uffd::ServerStats stats = manager_->PageServerStats();
  EXPECT_GT(stats.total.faults, 0u);
  EXPECT_GT(stats.total.pages_copied + stats.total.zero_pages, 0u);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo with_clones, manager_->GetSnapshot("golden"));
  EXPECT_EQ(with_clones.clone_count, 5u);
  EXPECT_THAT(manager_->DeleteSnapshot("golden", false), StatusIs(absl::StatusCode::kFailedPrecondition));

  EXPECT_EQ(manager_->List({.snapshot_ref = "golden"}).size(), 5u);
  EXPECT_EQ(manager_->List({.label_selector = {{"suite", "manager"}}}).size(), 1u);
  for (const VmInfo& c : all) ASSERT_OK(manager_->Delete(c.id, false, absl::Seconds(2)).status());
  ASSERT_OK(manager_->Delete("base", true, absl::ZeroDuration()).status());
  ASSERT_OK(manager_->DeleteSnapshot("golden", false).status());
  EXPECT_TRUE(manager_->List({}).empty());
}

TEST_F(ManagerE2eTest, BadInputIsRefusedAndLeavesNothing) {
  RunRequest r = GuestRun("x");
  r.config.kernel_path = tmp_.path() + "/no-such-kernel";
  EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no-such-kernel")));
  r = GuestRun("a/b");
  EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vm name")));
  r = GuestRun(std::string(65, 'n'));
  EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kInvalidArgument));
  r = GuestRun("big");
  r.config.memory_mib = 1024 * 1024 - 1;
  EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kResourceExhausted));
  // A kernel that is not ELF: Firecracker starts, the boot fails, nothing stays.
  ASSERT_OK(WriteFileAtomic(tmp_.path() + "/not-elf", "MZ this is not an ELF kernel"));
  r = GuestRun("notelf");
  r.config.kernel_path = tmp_.path() + "/not-elf";
  EXPECT_THAT(manager_->Run(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not-elf")));
  EXPECT_THAT(manager_->Get("nope"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "nope"}), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->Delete("nope", false, absl::Seconds(1)), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(manager_->List({}).empty());
}

// A state directory on a small tmpfs (no reflink): snapshots and clones that
// would not fit are refused up front with ResourceExhausted, and nothing of
// them is left; the VM keeps running.
TEST_F(ManagerE2eTest, NotEnoughDiskIsRefusedUpFront) {
  manager_.reset();  // this test runs its own manager on the small file system
  std::string fs = tmp_.path() + "/small";
  ASSERT_OK(MakeDirs(fs, 0700));
  if (mount("tmpfs", fs.c_str(), "tmpfs", 0, "size=256m,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs (" << strerror(errno) << "): needs root";
  }
  absl::Cleanup unmount = [&fs] { umount2(fs.c_str(), MNT_DETACH); };
  ManagerOptions o;
  o.state_dir = fs + "/state";
  o.firecracker_bin = e2e::FirecrackerPath();
  o.network_prefix = "fcvt";
  o.network_pool = "10.211.0.0/16";
  o.warm_pool_size = 0;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Manager> m, Manager::Create(o));
  // A 40 MiB data disk, all allocated: every private copy takes 40 MiB here.
  ASSERT_OK(WriteFileAtomic(tmp_.path() + "/big.img", std::string(40 << 20, 'b')));
  RunRequest r = GuestRun("disky");
  r.config.drives = {{"data", tmp_.path() + "/big.img", false, false}};
  ASSERT_OK_AND_ASSIGN(VmInfo vm, m->Run(r));  // 40 MiB copied: ~216 MiB left
  ASSERT_GE(WaitTicks(vm.console_log_path, 1).ok, 1);
  // 128 MiB memory + 40 MiB disk fit once: ~48 MiB left after it.
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, m->CreateSnapshot({.vm_ref = "disky", .name = "fits"}));

  EXPECT_THAT(m->Clone({.snapshot_ref = "fits", .count = 2}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("not enough disk space")));
  EXPECT_EQ(m->List({}).size(), 1u) << "no clone left behind";
  EXPECT_THAT(m->CreateSnapshot({.vm_ref = "disky", .name = "too-big"}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("a snapshot of vm")));
  EXPECT_EQ(m->ListSnapshots({}).size(), 1u) << "no half snapshot";
  ASSERT_OK_AND_ASSIGN(VmInfo after, m->Get("disky"));
  EXPECT_EQ(after.state, VmState::kRunning) << "refused before pausing the VM";
  // The name is free again: with the space back, the same request works.
  ASSERT_OK(m->DeleteSnapshot("fits", false).status());
  ASSERT_OK_AND_ASSIGN(SnapshotInfo again, m->CreateSnapshot({.vm_ref = "disky", .name = "too-big"}));
  EXPECT_EQ(again.name, "too-big");

  for (const VmInfo& v : m->List({})) ASSERT_OK(m->Delete(v.id, true, absl::ZeroDuration()).status());
  ASSERT_OK(m->DeleteSnapshot("too-big", false).status());
  m.reset();
  std::move(unmount).Invoke();
  std::vector<std::string> left = e2e::Leftovers(tmp_.path());
  EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
}

TEST_F(ManagerE2eTest, WarmPoolServesClonesAndBoots) {
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(GuestRun("pooled-base")));
  ASSERT_GE(WaitTicks(vm.console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "pooled-base"}));
  // The pool refills in the background; within a few seconds a clone must
  // get a pooled process (no process start in its timings).
  absl::Time deadline = absl::Now() + absl::Seconds(15);
  bool pooled = false;
  while (!pooled && absl::Now() < deadline) {
    ASSERT_OK_AND_ASSIGN(CloneResult r, manager_->Clone({.snapshot_ref = snap.id, .count = 1}));
    ASSERT_EQ(r.succeeded, 1u) << r.clones[0].error;
    const VmInfo& c = r.clones[0];
    pooled = c.timings.from_warm_pool;
    ConsoleTicks t = WaitTicks(c.console_log_path, 1);
    EXPECT_EQ(t.bad, 0);
    EXPECT_GE(t.ok, 1) << ReadFile(c.console_log_path).value_or("");
    ASSERT_OK(manager_->Delete(c.id, true, absl::ZeroDuration()).status());
    if (!pooled) absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_TRUE(pooled) << "no clone came from the warm pool";
}

// The Firecracker of `pid` holds a tun fd attached to `tap`, inside the network
// namespace mounted at /run/netns/<netns>.
void ExpectTapOpenedInNamespace(int pid, const std::string& netns, const std::string& tap) {
  struct stat ns_st;
  ASSERT_EQ(stat(("/run/netns/" + netns).c_str(), &ns_st), 0) << netns;
  struct stat proc_ns;
  ASSERT_EQ(stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &proc_ns), 0);
  EXPECT_EQ(proc_ns.st_ino, ns_st.st_ino) << "firecracker " << pid << " is not in " << netns;
  bool found = false;
  std::string fd_dir = "/proc/" + std::to_string(pid) + "/fdinfo";
  for (int fd = 0; fd < 256 && !found; ++fd) {
    std::string info = ReadFile(fd_dir + "/" + std::to_string(fd)).value_or("");
    found = info.find("iff:\t" + tap) != std::string::npos;
  }
  EXPECT_TRUE(found) << "firecracker " << pid << " has no tun fd for " << tap;
}

TEST_F(ManagerE2eTest, ClonesGetTheirOwnNamespaceAndTap) {
  if (access("/run/netns", F_OK) != 0 && geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces";
  RunRequest r = GuestRun("netbase");
  r.config.network.enabled = true;
  absl::StatusOr<VmInfo> vm = manager_->Run(r);
  if (vm.status().code() == absl::StatusCode::kUnavailable) GTEST_SKIP() << vm.status();
  ASSERT_OK(vm.status());
  ASSERT_FALSE(vm->network.netns.empty());
  EXPECT_EQ(vm->network.guest_ip, "172.16.0.2");
  ExpectTapOpenedInNamespace(vm->pid, vm->network.netns, vm->network.tap);
  ASSERT_GE(WaitTicks(vm->console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "netbase", .name = "netsnap"}));
  ASSERT_OK_AND_ASSIGN(CloneResult clones,
                       manager_->Clone({.snapshot_ref = "netsnap", .count = 8, .parallelism = 4}));
  ASSERT_EQ(clones.succeeded, 8u) << clones.clones[0].error;
  std::set<std::string> namespaces, addresses;
  for (const VmInfo& c : clones.clones) {
    EXPECT_FALSE(c.timings.from_warm_pool) << "a networked clone needs a process started in its namespace";
    ExpectTapOpenedInNamespace(c.pid, c.network.netns, c.network.tap);
    EXPECT_EQ(c.network.tap, vm->network.tap);
    EXPECT_EQ(c.network.guest_ip, "172.16.0.2");
    namespaces.insert(c.network.netns);
    addresses.insert(c.network.host_ip);
    ConsoleTicks t = WaitTicks(c.console_log_path, 1);
    EXPECT_EQ(t.bad, 0);
    EXPECT_GE(t.ok, 1);
  }
  EXPECT_EQ(namespaces.size(), 8u);
  EXPECT_EQ(addresses.size(), 8u);
  for (const VmInfo& c : clones.clones)
    ASSERT_OK(manager_->Delete(c.id, true, absl::ZeroDuration()).status());
  ASSERT_OK(manager_->Delete("netbase", true, absl::ZeroDuration()).status());
  for (const std::string& ns : namespaces) {
    EXPECT_NE(access(("/run/netns/" + ns).c_str(), F_OK), 0) << ns << " left behind";
  }
}

TEST_F(ManagerE2eTest, RestartReadoptsBootedVmAndUffdClones) {
  ManagerOptions o = manager_->options();
  o.warm_pool_size = 0;
  manager_.reset();
  ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o));
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(GuestRun("survivor")));
  ASSERT_GE(WaitTicks(vm.console_log_path, 1).ok, 1);
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "survivor"}));
  ASSERT_OK_AND_ASSIGN(CloneResult clones,
                       manager_->Clone({.snapshot_ref = snap.id, .count = 1, .policy = ClonePolicy::kNone}));
  ASSERT_EQ(clones.succeeded, 1u);
  const VmInfo& c = clones.clones[0];
  ASSERT_GE(WaitTicks(c.console_log_path, 1).ok, 1);

  manager_.reset();  // "fcvmd stops"
  EXPECT_EQ(kill(vm.pid, 0), 0) << "a booted VM must survive its manager";
  EXPECT_EQ(kill(c.pid, 0), 0) << "a UFFD clone must survive its manager";
  const int ticks_before = ReadTicks(c.console_log_path).ok;

  ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o));
  ASSERT_OK_AND_ASSIGN(VmInfo back, manager_->Get("survivor"));
  EXPECT_EQ(back.state, VmState::kRunning);
  EXPECT_EQ(back.pid, vm.pid);
  ASSERT_OK(manager_->Pause("survivor").status());
  ASSERT_OK(manager_->Resume("survivor").status());
  ASSERT_OK_AND_ASSIGN(VmInfo clone, manager_->Get(c.id));
  EXPECT_EQ(clone.state, VmState::kRunning);
  EXPECT_EQ(clone.pid, c.pid);
  // Its guest carries on, every tick OK (its memory is exact), served by
  // this manager's page server.
  ConsoleTicks after = WaitTicks(c.console_log_path, ticks_before + 2);
  EXPECT_EQ(after.bad, 0);
  EXPECT_GE(after.ok, ticks_before + 2);
  ASSERT_OK(manager_->Delete("survivor", false, absl::Seconds(2)).status());
  ASSERT_OK(manager_->Delete(clone.id, false, absl::Seconds(1)).status());
  EXPECT_NE(kill(vm.pid, 0), 0);
  EXPECT_NE(kill(c.pid, 0), 0);
}

// The cgroup directory of `pid` for `controller` (v1) or its unified cgroup
// (v2, controller ""), as a host path; "" if not found.
std::string CgroupDirOf(pid_t pid, const firecracker::CgroupHost& host, const std::string& controller) {
  std::string text = ReadFile(absl::StrCat("/proc/", pid, "/cgroup")).value_or("");
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (controller.empty() && f[1].empty() && !host.v2_mount.empty()) return host.v2_mount + f[2];
    if (controller.empty()) continue;
    for (absl::string_view c : absl::StrSplit(f[1], ',')) {
      auto m = host.v1_mounts.find(controller);
      if (c == controller && m != host.v1_mounts.end()) return m->second + f[2];
    }
  }
  return "";
}

// A limit file's value, trimmed.
std::string CgroupValue(const std::string& dir, const std::string& file) {
  std::string v = ReadFile(dir + "/" + file).value_or("?");
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

// fcvmd's way: a jailed VM and 8 jailed clones, each its own uid/gid, no
// capabilities, seccomp on every thread, its own chroot holding its own
// files, PID namespace and cgroup with the asked limits; none can read
// another's disk or reach its API; after delete nothing of them remains.
TEST_F(ManagerE2eTest, JailedVmAndClonesAreConfined) {
  if (std::string why = e2e::MissingJailPrerequisite(); !why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(manager_->options().jailer_bin.size() > 0);
  ASSERT_OK_AND_ASSIGN(firecracker::CgroupHost cgroups, firecracker::CgroupHost::Detect());
  RunRequest r = GuestRun("jailed");
  r.config.limits = {.memory_mib = 256, .cpu_percent = 50, .cpu_weight = 200, .pids_max = 24};
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(r));
  ASSERT_GE(WaitTicks(vm.console_log_path, 1).ok, 1) << ReadFile(vm.console_log_path).value_or("");
  ASSERT_OK_AND_ASSIGN(SnapshotInfo snap, manager_->CreateSnapshot({.vm_ref = "jailed", .name = "jsnap"}));
  EXPECT_TRUE(snap.jailed);
  CloneRequest c;
  c.snapshot_ref = "jsnap";
  c.count = 8;
  c.parallelism = 4;
  c.limits = ResourceLimits{.memory_mib = 200, .cpu_percent = 25, .cpu_weight = 50, .pids_max = 20};
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone(c));
  ASSERT_EQ(clones.succeeded, 8u) << (clones.clones.empty() ? "" : clones.clones[0].error);

  std::vector<VmInfo> all = {vm};
  for (const VmInfo& cl : clones.clones) all.push_back(cl);
  std::set<uint32_t> uids;
  std::set<std::string> chroots, pidns;
  const std::string host_pidns = e2e::ReadLink("/proc/self/ns/pid");
  for (const VmInfo& v0 : all) {
    ASSERT_OK_AND_ASSIGN(VmInfo v, manager_->Get(v0.id));
    SCOPED_TRACE(v.name);
    ASSERT_TRUE(v.jailed);
    EXPECT_EQ(v.state, VmState::kRunning);
    EXPECT_GE(WaitTicks(v.console_log_path, 2).ok, 2) << ReadFile(v.console_log_path).value_or("");
    EXPECT_NE(v.jail.uid, 0u);
    EXPECT_EQ(v.jail.gid, v.jail.uid);
    uids.insert(v.jail.uid);
    chroots.insert(v.jail.chroot);
    const std::string proc = absl::StrCat("/proc/", v.pid);
    const std::string ids = absl::StrCat(v.jail.uid, "\t", v.jail.uid, "\t", v.jail.uid, "\t", v.jail.uid);
    std::map<std::string, std::string> st = e2e::ReadStatus(proc + "/status");
    EXPECT_EQ(st["Uid"], ids);
    EXPECT_EQ(st["Gid"], ids);
    std::set<std::string> tasks;
    e2e::ListTree(proc + "/task", "", &tasks);
    int threads = 0;
    for (const std::string& t : tasks) {
      if (absl::StrContains(t, '/')) continue;
      std::map<std::string, std::string> ts = e2e::ReadStatus(absl::StrCat(proc, "/task/", t, "/status"));
      if (ts.empty()) continue;  // a thread that just ended
      ++threads;
      EXPECT_EQ(ts["CapEff"], "0000000000000000") << ts["Name"];
      EXPECT_EQ(ts["Seccomp"], "2") << ts["Name"];
    }
    EXPECT_GE(threads, 3);
    // Its root is its own chroot, holding its own copy of the writable disk.
    struct stat root_st, chroot_st;
    ASSERT_EQ(stat((proc + "/root").c_str(), &root_st), 0);
    ASSERT_EQ(stat(v.jail.chroot.c_str(), &chroot_st), 0);
    EXPECT_EQ(root_st.st_ino, chroot_st.st_ino);
    EXPECT_EQ(root_st.st_dev, chroot_st.st_dev);
    std::set<std::string> files;
    e2e::ListTree(v.jail.chroot, "", &files);
    EXPECT_TRUE(files.count("run/firecracker.socket"));
    EXPECT_TRUE(files.count("drives/data")) << absl::StrJoin(files, " ");
    EXPECT_TRUE(files.count("dev/kvm"));
    EXPECT_FALSE(files.count("etc")) << "host files in the jail";
    const std::string ns = e2e::ReadLink(proc + "/ns/pid");
    EXPECT_NE(ns, host_pidns);
    pidns.insert(ns);
    EXPECT_EQ(st["NSpid"], absl::StrCat(v.pid, "\t1"));
    // The asked limits are in force, in the VM's cgroup.
    const ResourceLimits want = v.id == vm.id ? r.config.limits : *c.limits;
    EXPECT_EQ(v.jail.limits.memory_mib, want.memory_mib);
    EXPECT_EQ(v.jail.limits.pids_max, want.pids_max);
    EXPECT_EQ(v.jail.limits.cpu_percent, want.cpu_percent);
    if (v.jail.cgroup_version == "v2") {
      std::string dir = CgroupDirOf(v.pid, cgroups, "");
      EXPECT_EQ(CgroupValue(dir, "memory.max"), std::to_string(uint64_t{want.memory_mib} << 20));
      EXPECT_EQ(CgroupValue(dir, "pids.max"), std::to_string(want.pids_max));
      EXPECT_EQ(CgroupValue(dir, "cpu.max"), absl::StrCat(want.cpu_percent * 1000, " 100000"));
    } else {
      EXPECT_EQ(v.jail.cgroup_version, "v1");
      EXPECT_EQ(CgroupValue(CgroupDirOf(v.pid, cgroups, "memory"), "memory.limit_in_bytes"),
                std::to_string(uint64_t{want.memory_mib} << 20));
      EXPECT_EQ(CgroupValue(CgroupDirOf(v.pid, cgroups, "pids"), "pids.max"), std::to_string(want.pids_max));
      EXPECT_EQ(CgroupValue(CgroupDirOf(v.pid, cgroups, "cpu"), "cpu.cfs_quota_us"),
                std::to_string(want.cpu_percent * 1000));
    }
  }
  EXPECT_EQ(uids.size(), all.size()) << "each VM has its own uid";
  EXPECT_EQ(chroots.size(), all.size());
  EXPECT_EQ(pidns.size(), all.size()) << "each VM has its own PID namespace";

  // A clone's uid can neither read another VM's disk nor reach its API.
  const VmInfo& a = clones.clones[0];
  const VmInfo& b = clones.clones[1];
  auto [open_err, connect_err] = e2e::TryAs(a.jail.uid, a.jail.gid, b.jail.chroot + "/drives/data",
                                            b.jail.chroot + "/run/firecracker.socket");
  EXPECT_EQ(open_err, EACCES);
  EXPECT_EQ(connect_err, EACCES);
  auto [own_open, own_connect] = e2e::TryAs(b.jail.uid, b.jail.gid, b.jail.chroot + "/drives/data",
                                            b.jail.chroot + "/run/firecracker.socket");
  EXPECT_EQ(own_open, EACCES) << "the chroot's root is 0700 for its uid: the host path is not its own view";
  (void)own_connect;

  // After delete: no process, chroot, cgroup or uid lease.
  std::vector<std::string> cg_dirs;
  for (const VmInfo& v : all) {
    ASSERT_OK_AND_ASSIGN(VmInfo now, manager_->Get(v.id));
    cg_dirs.push_back(CgroupDirOf(now.pid, cgroups, now.jail.cgroup_version == "v2" ? "" : "memory"));
  }
  for (const VmInfo& v : all) ASSERT_OK(manager_->Delete(v.id, true, absl::ZeroDuration()).status());
  ASSERT_OK(manager_->DeleteSnapshot("jsnap", false).status());
  const std::string leases = ReadFile(manager_->options().state_dir + "/jail-uids.json").value_or("");
  for (size_t i = 0; i < all.size(); ++i) {
    SCOPED_TRACE(all[i].name);
    EXPECT_NE(kill(all[i].pid, 0), 0) << "process left";
    // The jail directory is the chroot's parent.
    EXPECT_NE(access(all[i].jail.chroot.c_str(), F_OK), 0) << all[i].jail.chroot;
    const std::string jail_dir = all[i].jail.chroot.substr(0, all[i].jail.chroot.rfind('/'));
    EXPECT_NE(access(jail_dir.c_str(), F_OK), 0) << jail_dir;
    EXPECT_FALSE(cg_dirs[i].empty());
    EXPECT_NE(access(cg_dirs[i].c_str(), F_OK), 0) << "cgroup left: " << cg_dirs[i];
    EXPECT_FALSE(absl::StrContains(leases, all[i].id)) << leases;
  }
}

TEST_F(ManagerE2eTest, CrashedFirecrackerIsMarkedFailed) {
  ASSERT_OK_AND_ASSIGN(VmInfo vm, manager_->Run(GuestRun("victim")));
  ASSERT_EQ(kill(vm.pid, SIGKILL), 0);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  VmInfo now;
  do {
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_OK_AND_ASSIGN(now, manager_->Get("victim"));
  } while (now.state == VmState::kRunning && absl::Now() < deadline);
  EXPECT_EQ(now.state, VmState::kFailed);
  EXPECT_THAT(now.error, HasSubstr("signal 9"));
  EXPECT_EQ(now.pid, 0);
  ASSERT_OK(manager_->Delete("victim", false, absl::Seconds(1)).status());
}

}  // namespace
}  // namespace fcvm::vm
