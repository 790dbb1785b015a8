// End-to-end tests of lib/firecracker with the real Firecracker and the
// bare-metal test guest (tests/guest). They need FCVM_FIRECRACKER_BIN (a
// Firecracker >= 1.12), a usable /dev/kvm and the guest ELF, and skip with
// the reason otherwise. Run them as root (mount and network namespaces, taps).
//
// One "golden" VM is booted, paused and snapshotted (Full) per test suite;
// the restore tests start fresh Firecracker processes from it. Every test
// ends by checking that it left no process, socket, mount or namespace behind.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "lib/base/pidfd.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::e2e::TempDir;
using ::fcvm::e2e::UffdTestServer;
using ::fcvm::testing::IsOk;
using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kTickTimeout = absl::Seconds(30);

off_t SizeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

ino_t InodeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

int Sh(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  if (Sh(absl::StrCat("cp --sparse=always '", from, "' '", to, "'")) != 0) {
    return absl::InternalError(absl::StrCat("cp ", from, " ", to));
  }
  return absl::OkStatus();
}

// The inode of the file that process `pid` has open under the name `path`
// (as that process sees it), 0 if none.
ino_t OpenFileInode(pid_t pid, const std::string& path) {
  for (int fd = 0; fd < 256; ++fd) {
    std::string link = absl::StrCat("/proc/", pid, "/fd/", fd);
    char buf[4096];
    ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
    if (n <= 0) continue;
    if (std::string(buf, static_cast<size_t>(n)) == path) return InodeOf(link);
  }
  return 0;
}

class FirecrackerE2E : public ::testing::Test {
 protected:
  struct Golden {
    std::unique_ptr<TempDir> dir;
    std::optional<FirecrackerBinary> binary;
    std::string disk;  // the drive path baked into the snapshot
    std::string vmstate;
    std::string mem;
    uint64_t last_tick = 0;  // the last tick printed before the snapshot
    std::string error;       // why the golden snapshot could not be made
  };
  static Golden* golden_;

  static absl::Status MakeGolden(Golden& g) {
    ASSIGN_OR_RETURN(FirecrackerBinary binary, FirecrackerBinary::Probe(e2e::FirecrackerPath()));
    g.binary = binary;
    g.disk = g.dir->path() + "/disk.img";
    if (Sh(absl::StrCat("truncate -s 1M '", g.disk, "'")) != 0) return absl::InternalError("truncate");
    ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, Vmm::Launch(binary, {.vm_dir = g.dir->path() + "/golden",
                                                                    .id = "golden",
                                                                    .parent_death_signal = SIGKILL}));
    BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
    spec.drives.push_back({.drive_id = "scratch", .path_on_host = g.disk});
    RETURN_IF_ERROR(vmm->Boot(spec));
    ASSIGN_OR_RETURN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
    ASSIGN_OR_RETURN(e2e::Tick t, e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout));
    RETURN_IF_ERROR(vmm->api().Pause());
    g.vmstate = g.dir->path() + "/golden.vmstate";
    g.mem = g.dir->path() + "/golden.mem";
    RETURN_IF_ERROR(vmm->CreateSnapshot({.snapshot_path = g.vmstate, .mem_file_path = g.mem}));
    g.last_tick = e2e::LastTick(vmm->console());
    return vmm->Kill().status();
  }

  static void SetUpTestSuite() {
    golden_ = new Golden();
    if (!e2e::MissingPrerequisite().empty()) return;
    golden_->dir = std::make_unique<TempDir>();
    absl::Status st = MakeGolden(*golden_);
    if (!st.ok()) golden_->error = std::string(st.message());
  }

  static void TearDownTestSuite() {
    delete golden_;
    golden_ = nullptr;
  }

  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    ASSERT_EQ(golden_->error, "") << "golden snapshot failed";
    dir_ = std::make_unique<TempDir>();
  }

  void TearDown() override {
    vmms_.clear();
    servers_.clear();
    if (dir_ == nullptr) return;
    EXPECT_THAT(e2e::Leftovers(dir_->path(), netns_.empty() ? "" : netns_), IsEmpty());
    EXPECT_THAT(e2e::Leftovers(golden_->dir->path()), IsEmpty());
  }

  const FirecrackerBinary& bin() { return *golden_->binary; }
  const Golden& golden() { return *golden_; }

  absl::StatusOr<Vmm*> Launch(const std::string& name, VmmOptions options = {}) {
    options.vm_dir = absl::StrCat(dir_->path(), "/", name);
    options.id = name;
    options.parent_death_signal = SIGKILL;  // a crashed test leaves no VM behind
    ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin(), std::move(options)));
    vmms_.push_back(std::move(vmm));
    return vmms_.back().get();
  }

  SnapshotLoad FileLoad() {
    return {.snapshot_path = golden().vmstate,
            .backend = MemBackend::kFile,
            .backend_path = golden().mem,
            .resume_vm = true};
  }

  absl::StatusOr<SnapshotLoad> UffdLoad(const std::string& name, UffdTestServer::Options options = {}) {
    ASSIGN_OR_RETURN(std::unique_ptr<UffdTestServer> server,
                     UffdTestServer::Start(absl::StrCat(dir_->path(), "/", name, ".uffd.sock"), golden().mem,
                                           std::move(options)));
    servers_.push_back(std::move(server));
    return SnapshotLoad{.snapshot_path = golden().vmstate,
                        .backend = MemBackend::kUffd,
                        .backend_path = servers_.back()->socket_path(),
                        .resume_vm = true};
  }

  // The restored guest carries on: two OK ticks, numbered after the snapshot.
  void ExpectTicksContinue(Vmm& vmm, uint64_t after_tick) {
    absl::StatusOr<e2e::Tick> t = e2e::WaitForOkTicks(vmm.console(), 0, 2, after_tick, kTickTimeout);
    EXPECT_THAT(t.status(), IsOk()) << vmm.options().id << vmm.RecentOutput();
    EXPECT_OK(vmm.CheckRunning());
  }

  std::unique_ptr<TempDir> dir_;
  std::vector<std::unique_ptr<Vmm>> vmms_;
  std::vector<std::unique_ptr<UffdTestServer>> servers_;
  std::string netns_;
};

FirecrackerE2E::Golden* FirecrackerE2E::golden_ = nullptr;

TEST_F(FirecrackerE2E, BootPauseSnapshotResume) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("boot"));
  ASSERT_OK_AND_ASSIGN(Version v, vmm->api().GetVersion());
  EXPECT_EQ(v, bin().version());
  ASSERT_OK_AND_ASSIGN(InstanceInfo info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.state, VmState::kNotStarted);
  EXPECT_EQ(info.id, "boot");

  ASSERT_OK(vmm->Boot(e2e::GuestBootSpec(e2e::GuestPath())));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK_AND_ASSIGN(e2e::Tick t1, e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout));

  // Firecracker refuses to snapshot a running VM; its fault_message comes
  // back in the status.
  std::string vmstate = dir_->path() + "/s.vmstate", mem = dir_->path() + "/s.mem";
  absl::Status running = vmm->CreateSnapshot({.snapshot_path = vmstate, .mem_file_path = mem});
  EXPECT_THAT(running, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("PUT /snapshot/create: ")));
  std::printf("snapshot of a running VM: %s\n", std::string(running.message()).c_str());
  EXPECT_OK(vmm->CheckRunning());

  ASSERT_OK(vmm->api().Pause());
  ASSERT_OK_AND_ASSIGN(info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.state, VmState::kPaused);
  ASSERT_OK(vmm->CreateSnapshot({.snapshot_path = vmstate, .mem_file_path = mem}));
  EXPECT_EQ(SizeOf(mem), int64_t{e2e::kGuestMemMib} << 20);
  EXPECT_GT(SizeOf(vmstate), 0);
  uint64_t line = vmm->console().line_count();
  ASSERT_OK(vmm->api().Resume());
  ASSERT_OK_AND_ASSIGN(info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.state, VmState::kRunning);
  EXPECT_OK(e2e::WaitForOkTicks(vmm->console(), line, 2, t1.number, kTickTimeout).status());

  // Metrics and log go to the per-VM files given at launch.
  ASSERT_OK(vmm->api().Call("PUT", "/actions", R"({"action_type":"FlushMetrics"})").status());
  EXPECT_GT(SizeOf(vmm->metrics_path()), 0);
  EXPECT_GT(SizeOf(vmm->log_path()), 0);
  EXPECT_GT(SizeOf(vmm->console_log_path()), 0);

  ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(SizeOf(vmm->api_socket_path()), -1) << "socket still there";
}

TEST_F(FirecrackerE2E, DiffSnapshotWithDirtyPageTracking) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("diff"));
  BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
  spec.machine.track_dirty_pages = true;
  ASSERT_OK(vmm->Boot(spec));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK_AND_ASSIGN(e2e::Tick t1, e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout));
  ASSERT_OK(vmm->api().Pause());
  std::string base = dir_->path() + "/d";
  ASSERT_OK(
      vmm->CreateSnapshot({.snapshot_path = base + ".full.vmstate", .mem_file_path = base + ".full.mem"}));
  uint64_t line = vmm->console().line_count();
  ASSERT_OK(vmm->api().Resume());
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), line, 1, t1.number, kTickTimeout).status());
  ASSERT_OK(vmm->api().Pause());
  ASSERT_OK(vmm->CreateSnapshot({.type = SnapshotType::kDiff,
                                 .snapshot_path = base + ".diff.vmstate",
                                 .mem_file_path = base + ".diff.mem"}));
  // A Diff memory file is sparse: only pages dirtied since the Full one.
  struct stat st;
  ASSERT_EQ(stat((base + ".diff.mem").c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, st.st_size / 2);

  // Firecracker merges a Diff into an existing memory file of the right size;
  // a clone restored from the merged file must find every page the guest
  // wrote (the guest checks its write area on every tick: a lost dirty page
  // shows as a BAD tick).
  std::string merged = base + ".merged.mem";
  ASSERT_OK(CopyFile(base + ".full.mem", merged));
  line = vmm->console().line_count();
  ASSERT_OK(vmm->api().Resume());
  ASSERT_OK_AND_ASSIGN(e2e::Tick t2, e2e::WaitForOkTicks(vmm->console(), line, 1, t1.number, kTickTimeout));
  ASSERT_OK(vmm->api().Pause());
  ASSERT_OK(vmm->CreateSnapshot(
      {.type = SnapshotType::kDiff, .snapshot_path = base + ".diff2.vmstate", .mem_file_path = merged}));
  uint64_t last = e2e::LastTick(vmm->console());
  ASSERT_OK(vmm->Kill().status());
  ASSERT_OK_AND_ASSIGN(Vmm * clone, Launch("diffclone"));
  ASSERT_OK(clone->LoadSnapshot({.snapshot_path = base + ".diff2.vmstate",
                                 .backend = MemBackend::kFile,
                                 .backend_path = merged,
                                 .resume_vm = true,
                                 .track_dirty_pages = true}));
  ExpectTicksContinue(*clone, std::max(last, t2.number));
}

TEST_F(FirecrackerE2E, RestoreFileBackend) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("file"));
  ASSERT_OK(vmm->LoadSnapshot(FileLoad()));
  ASSERT_OK_AND_ASSIGN(InstanceInfo info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.state, VmState::kRunning);
  ExpectTicksContinue(*vmm, golden().last_tick);
}

TEST_F(FirecrackerE2E, UnexpectedExitIsReported) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("victim"));
  ASSERT_OK(vmm->LoadSnapshot(FileLoad()));
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), 0, 1, golden().last_tick, kTickTimeout).status());
  // Someone else kills Firecracker: the pidfd says so, and the next call
  // reports how it ended together with the guest's last words.
  ASSERT_EQ(kill(vmm->pid(), SIGKILL), 0);
  struct pollfd pfd = {vmm->pidfd(), POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 10000), 1);
  absl::Status st = vmm->Explain(vmm->api().Pause());
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kUnavailable,
                           AllOf(HasSubstr("PATCH /vm"), HasSubstr("killed by signal 9"),
                                 HasSubstr("FCVM-GUEST TICK"))));
  EXPECT_THAT(vmm->CheckRunning(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("killed by signal 9")));
  std::printf("unexpected exit: %s\n", std::string(st.message()).c_str());
}

TEST_F(FirecrackerE2E, RestoreUffdBackend) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("uffd"));
  ASSERT_OK_AND_ASSIGN(SnapshotLoad load, UffdLoad("uffd"));
  ASSERT_OK(vmm->LoadSnapshot(load));
  ExpectTicksContinue(*vmm, golden().last_tick);
  EXPECT_OK(servers_[0]->error());
  EXPECT_GT(servers_[0]->faults_served(), 2560u) << "every page of the test areas is touched by a tick";
}

TEST_F(FirecrackerE2E, EightClonesWithPrivateDisks) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for the per-clone mount namespaces";
  constexpr int kClones = 8;
  std::vector<Vmm*> clones;
  std::vector<std::string> disks;
  std::vector<SnapshotLoad> loads;
  for (int i = 0; i < kClones; ++i) {
    std::string name = absl::StrCat("clone", i);
    // Each clone gets its own copy of the disk at the path baked into the
    // snapshot, through its own mount namespace.
    disks.push_back(absl::StrCat(dir_->path(), "/", name, ".disk.img"));
    ASSERT_OK(CopyFile(golden().disk, disks.back()));
    ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch(name, {.bind_mounts = {{disks.back(), golden().disk}}}));
    clones.push_back(vmm);
    if (i % 2 == 0) {
      loads.push_back(FileLoad());
    } else {
      ASSERT_OK_AND_ASSIGN(SnapshotLoad l, UffdLoad(name));
      loads.push_back(l);
    }
  }
  // All loads at once.
  std::vector<absl::Status> results(kClones);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClones; ++i) {
    threads.emplace_back([&, i] { results[i] = clones[i]->LoadSnapshot(loads[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClones; ++i) ASSERT_OK(results[i]) << "clone " << i;

  for (int i = 0; i < kClones; ++i) {
    SCOPED_TRACE(absl::StrCat("clone ", i));
    ExpectTicksContinue(*clones[i], golden().last_tick);
    // The clone opened "the golden disk path" and got its own file.
    EXPECT_EQ(OpenFileInode(clones[i]->pid(), golden().disk), InodeOf(disks[i]));
  }
  EXPECT_NE(InodeOf(disks[0]), InodeOf(golden().disk));
  for (auto& s : servers_) EXPECT_OK(s->error());
}

class NetnsE2E : public FirecrackerE2E {
 protected:
  void SetUp() override {
    FirecrackerE2E::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces and taps";
    netns_ = absl::StrCat("fcvm-e2e-", getpid());
    ASSERT_EQ(Sh(absl::StrCat("ip netns add ", netns_)), 0);
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(Sh(absl::StrCat("ip -n ", netns_, " tuntap add fcvm-tap", i, " mode tap")), 0);
    }
    netns_fd_.Reset(open(absl::StrCat("/run/netns/", netns_).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(netns_fd_.valid());
  }
  void TearDown() override {
    vmms_.clear();  // Firecracker lets go of the taps first
    netns_fd_.Reset();
    if (!netns_.empty()) {
      EXPECT_EQ(Sh(absl::StrCat("ip netns del ", netns_)), 0);
      // The taps lived in the namespace only: none may show up on the host.
      EXPECT_NE(Sh("ip -o link show 2>/dev/null | grep -q fcvm-tap"), 0);
    }
    FirecrackerE2E::TearDown();
  }
  UniqueFd netns_fd_;
};

TEST_F(NetnsE2E, NetworkOverridesOntoTaps) {
  // A source VM with eth0 on fcvm-tap0, inside the test's namespace.
  ASSERT_OK_AND_ASSIGN(Vmm * source, Launch("netsrc", {.netns_fd = netns_fd_.get()}));
  BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
  spec.network_interfaces.push_back(
      {.iface_id = "eth0", .host_dev_name = "fcvm-tap0", .guest_mac = "06:00:ac:10:00:02"});
  ASSERT_OK(source->Boot(spec));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(source->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(source->console(), ready, 1, 0, kTickTimeout).status());
  ASSERT_OK(source->api().Pause());
  std::string vmstate = dir_->path() + "/net.vmstate", mem = dir_->path() + "/net.mem";
  ASSERT_OK(source->CreateSnapshot({.snapshot_path = vmstate, .mem_file_path = mem}));
  uint64_t last = e2e::LastTick(source->console());
  // The paused source keeps fcvm-tap0 open: a clone can only run on another tap.

  SnapshotLoad load{
      .snapshot_path = vmstate, .backend = MemBackend::kFile, .backend_path = mem, .resume_vm = true};
  for (int i = 1; i <= 2; ++i) {
    ASSERT_OK_AND_ASSIGN(Vmm * clone, Launch(absl::StrCat("net", i), {.netns_fd = netns_fd_.get()}));
    SnapshotLoad l = load;
    l.network_overrides = {{"eth0", absl::StrCat("fcvm-tap", i)}};
    ASSERT_OK(clone->LoadSnapshot(l));
  }
  for (size_t i = 1; i < vmms_.size(); ++i) ExpectTicksContinue(*vmms_[i], last);

  // Without an override the clone wants fcvm-tap0, which is busy: the load
  // fails, Firecracker exits, and the error says so.
  ASSERT_OK_AND_ASSIGN(Vmm * busy, Launch("net3", {.netns_fd = netns_fd_.get()}));
  absl::Status st = busy->LoadSnapshot(load);
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           AllOf(HasSubstr("load snapshot " + vmstate), HasSubstr("exited"))));
  EXPECT_THAT(busy->CheckRunning(), StatusIs(absl::StatusCode::kUnavailable));
  // An unknown interface in the overrides is refused the same way.
  ASSERT_OK_AND_ASSIGN(Vmm * unknown, Launch("net4", {.netns_fd = netns_fd_.get()}));
  SnapshotLoad bad = load;
  bad.network_overrides = {{"eth9", "fcvm-tap2"}};
  EXPECT_THAT(unknown->LoadSnapshot(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Unknown Network")));
}

// ---------------------------------------------------------------- bad input

TEST_F(FirecrackerE2E, MissingKernel) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("nokernel"));
  BootSpec spec = e2e::GuestBootSpec(dir_->path() + "/no-such-vmlinux");
  EXPECT_THAT(vmm->Boot(spec), StatusIs(absl::StatusCode::kNotFound, HasSubstr("no-such-vmlinux")));
  // Firecracker itself says so too when asked directly.
  EXPECT_THAT(vmm->api().PutBootSource(spec.boot_source), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_OK(vmm->CheckRunning());
}

TEST_F(FirecrackerE2E, KernelNotElf) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("notelf"));
  std::string kernel = dir_->path() + "/bzImage";
  std::ofstream(kernel) << "MZ this is not an ELF kernel";
  BootSpec spec = e2e::GuestBootSpec(kernel);
  EXPECT_THAT(vmm->Boot(spec), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr(kernel), HasSubstr("not an ELF"))));
  // Past our check, Firecracker's own fault_message reaches the status.
  ASSERT_OK(vmm->api().PutBootSource(spec.boot_source));
  EXPECT_THAT(vmm->api().InstanceStart(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ELF")));
}

TEST_F(FirecrackerE2E, MissingSnapshotFiles) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("nofiles"));
  SnapshotLoad load = FileLoad();
  load.snapshot_path = dir_->path() + "/none.vmstate";
  EXPECT_THAT(vmm->LoadSnapshot(load), StatusIs(absl::StatusCode::kNotFound, HasSubstr("none.vmstate")));
  load = FileLoad();
  load.backend_path = dir_->path() + "/none.mem";
  EXPECT_THAT(vmm->LoadSnapshot(load), StatusIs(absl::StatusCode::kNotFound, HasSubstr("none.mem")));
  // Caught before Firecracker saw them: it still runs and can load.
  ASSERT_OK(vmm->LoadSnapshot(FileLoad()));
  ExpectTicksContinue(*vmm, golden().last_tick);
}

TEST_F(FirecrackerE2E, TruncatedVmstate) {
  std::string vmstate = dir_->path() + "/trunc.vmstate";
  ASSERT_OK(CopyFile(golden().vmstate, vmstate));
  ASSERT_EQ(truncate(vmstate.c_str(), SizeOf(vmstate) / 2), 0);
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("trunc"));
  SnapshotLoad load = FileLoad();
  load.snapshot_path = vmstate;
  absl::Status st = vmm->LoadSnapshot(load);
  EXPECT_THAT(st,
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr(vmstate), HasSubstr("exited"))));
  std::printf("truncated vmstate: %s\n", std::string(st.message()).c_str());
}

TEST_F(FirecrackerE2E, CorruptVmstate) {
  std::string vmstate = dir_->path() + "/corrupt.vmstate";
  ASSERT_OK(CopyFile(golden().vmstate, vmstate));
  {
    int fd = open(vmstate.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::string junk(64, '\x5a');
    ASSERT_EQ(pwrite(fd, junk.data(), junk.size(), SizeOf(vmstate) / 2), 64);
    close(fd);
  }
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("corrupt"));
  SnapshotLoad load = FileLoad();
  load.snapshot_path = vmstate;
  absl::Status st = vmm->LoadSnapshot(load);
  EXPECT_THAT(st,
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr(vmstate), HasSubstr("exited"))));
  std::printf("corrupt vmstate: %s\n", std::string(st.message()).c_str());
}

TEST_F(FirecrackerE2E, MemoryFileOfTheWrongSize) {
  std::string mem = dir_->path() + "/small.mem";
  ASSERT_EQ(Sh(absl::StrCat("truncate -s 64M '", mem, "'")), 0);
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("smallmem"));
  SnapshotLoad load = FileLoad();
  load.backend_path = mem;
  absl::Status st = vmm->LoadSnapshot(load);
  EXPECT_THAT(
      st, StatusIs(absl::StatusCode::kInvalidArgument,
                   AllOf(HasSubstr("memory file " + mem), HasSubstr("smaller than"), HasSubstr("exited"))));
  std::printf("small memory file: %s\n", std::string(st.message()).c_str());

  std::string odd = dir_->path() + "/odd.mem";
  ASSERT_EQ(Sh(absl::StrCat("truncate -s 1000 '", odd, "'")), 0);
  ASSERT_OK_AND_ASSIGN(Vmm * vmm2, Launch("oddmem"));
  load.backend_path = odd;
  EXPECT_THAT(vmm2->LoadSnapshot(load), StatusIs(absl::StatusCode::kInvalidArgument,
                                                 AllOf(HasSubstr(odd), HasSubstr("whole number of pages"))));
}

TEST_F(FirecrackerE2E, FirecrackerDiesDuringLoad) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("dies"));
  int pidfd = vmm->pidfd();
  // The page server takes the handshake, serves nothing (the load blocks on
  // Firecracker's own first page faults) and kills Firecracker.
  ASSERT_OK_AND_ASSIGN(
      SnapshotLoad load,
      UffdLoad("dies", {.on_handshake = [pidfd] { PidfdSendSignal(pidfd, SIGKILL); }, .serve = false}));
  absl::Status st = vmm->LoadSnapshot(load);
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("killed by signal 9")));
  EXPECT_TRUE(servers_[0]->handshake_done());
  std::printf("died during load: %s\n", std::string(st.message()).c_str());
}

TEST_F(FirecrackerE2E, TooOldFirecrackerIsRefused) {
  std::string fake = dir_->path() + "/firecracker";
  std::ofstream(fake) << "#!/bin/sh\necho 'Firecracker v1.11.0'\n";
  ASSERT_EQ(chmod(fake.c_str(), 0755), 0);
  EXPECT_THAT(FirecrackerBinary::Probe(fake),
              StatusIs(absl::StatusCode::kFailedPrecondition, AllOf(HasSubstr(fake), HasSubstr("1.11.0"))));
  EXPECT_THAT(FirecrackerBinary::Probe(dir_->path() + "/missing"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fcvm::firecracker
