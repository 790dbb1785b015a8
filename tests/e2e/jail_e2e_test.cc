// End-to-end tests of jailed Firecracker (VmmOptions::jail) with the real
// jailer and Firecracker and the bare-metal test guest. They need what the
// other e2e tests need plus a jailer >= 1.7 (env FCVM_JAILER_BIN, else
// "jailer" beside FCVM_FIRECRACKER_BIN) and root, and skip with the reason
// otherwise.
//
// Every test ends by checking that no process, socket, mount, jail or cgroup
// of its own is left. The cgroups live under a parent named after the test
// process ("fcvm-e2e-<pid>"), removed at the end.

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/firecracker/cgroup.h"
#include "lib/firecracker/jail.h"
#include "lib/firecracker/uid_pool.h"
#include "lib/firecracker/vmm.h"
#include "lib/uffd/page_server.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::e2e::ListTree;
using ::fcvm::e2e::ReadLink;
using ::fcvm::e2e::ReadStatus;
using ::fcvm::e2e::TempDir;
using ::fcvm::e2e::TryAs;
using ::fcvm::testing::IsOk;
using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kTickTimeout = absl::Seconds(30);

int Sh(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

ino_t InodeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// The inode of the file that process `pid` has open under the name `path`
// (as that process sees it), 0 if none.
ino_t OpenFileInode(pid_t pid, const std::string& path) {
  for (int fd = 0; fd < 256; ++fd) {
    std::string link = absl::StrCat("/proc/", pid, "/fd/", fd);
    if (ReadLink(link) == path) return InodeOf(link);
  }
  return 0;
}

class JailE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingJailPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    ASSERT_OK_AND_ASSIGN(FirecrackerBinary fc, FirecrackerBinary::Probe(e2e::FirecrackerPath()));
    fc_ = fc;
    ASSERT_OK_AND_ASSIGN(JailerBinary jailer, JailerBinary::Probe(e2e::JailerPath()));
    jailer_ = jailer;
    dir_ = std::make_unique<TempDir>();
    base_ = dir_->path() + "/jails";
    ASSERT_OK_AND_ASSIGN(uids_, UidPool::Open(dir_->path() + "/uids.json"));
    ASSERT_OK_AND_ASSIGN(cgroups_, CgroupHost::Detect());
    parent_ = absl::StrCat("fcvm-e2e-", getpid());
  }

  void TearDown() override {
    vmms_.clear();
    if (dir_ == nullptr) return;
    EXPECT_THAT(e2e::Leftovers(dir_->path()), IsEmpty());
    absl::StatusOr<std::vector<std::string>> jails = ListJails(fc_->path(), base_);
    ASSERT_OK(jails.status());
    EXPECT_THAT(*jails, IsEmpty()) << "jails left";
    // Every VM cgroup is gone: the test's parent cgroups are empty, and go.
    std::set<std::string> parents;
    for (const auto& [c, mount] : cgroups_.v1_mounts) parents.insert(absl::StrCat(mount, "/", parent_));
    if (!cgroups_.v2_mount.empty()) parents.insert(absl::StrCat(cgroups_.v2_mount, "/", parent_));
    for (const std::string& p : parents) {
      struct stat st;
      if (stat(p.c_str(), &st) < 0) continue;
      std::set<std::string> entries;
      ListTree(p, "", &entries);
      for (const std::string& e : entries) {
        struct stat es;
        if (stat(absl::StrCat(p, "/", e).c_str(), &es) == 0 && S_ISDIR(es.st_mode))
          ADD_FAILURE() << "cgroup left: " << p << "/" << e;
      }
      EXPECT_EQ(rmdir(p.c_str()), 0) << p << ": " << strerror(errno);
    }
  }

  CgroupLimits DefaultLimits() {
    return {.memory_bytes = MinMemoryBytes(e2e::kGuestMemMib),
            .cpu_quota_us = 100000,
            .cpu_period_us = 100000,
            .cpu_weight = 100,
            .pids_max = 16};
  }

  absl::StatusOr<JailOptions> Jail(const std::string& id, const CgroupLimits& limits) {
    ASSIGN_OR_RETURN(uint32_t uid, uids_->Lease(id));
    return JailOptions{.jailer = jailer_,
                       .chroot_base_dir = base_,
                       .uid = uid,
                       .gid = uid,
                       .parent_cgroup = parent_,
                       .limits = limits,
                       .cgroup_host = cgroups_};
  }

  absl::StatusOr<Vmm*> Launch(const std::string& id, JailOptions jail) {
    ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm,
                     Vmm::Launch(*fc_, {.vm_dir = absl::StrCat(dir_->path(), "/vms/", id),
                                        .id = id,
                                        .parent_death_signal = SIGKILL,
                                        .jail = std::move(jail)}));
    vmms_.push_back(std::move(vmm));
    return vmms_.back().get();
  }

  JailFile Kernel() { return {.host_path = e2e::GuestPath(), .jail_path = "/vmlinux"}; }

  BootSpec GuestSpec() {
    BootSpec spec = e2e::GuestBootSpec("/vmlinux");
    spec.drives.push_back({.drive_id = "scratch", .path_on_host = "/scratch.img"});
    return spec;
  }

  // A 1 MiB private disk at /scratch.img in `id`'s chroot, owned by its uid.
  absl::Status MakeScratchDisk(const JailOptions& jail, const std::string& id, const std::string& from = "") {
    ASSIGN_OR_RETURN(JailPaths paths, JailPathsFor(fc_->path(), base_, id));
    RETURN_IF_ERROR(PrepareJail(paths));
    ASSIGN_OR_RETURN(std::string disk, paths.HostPath("/scratch.img"));
    std::string cmd = from.empty() ? absl::StrCat("truncate -s 1M '", disk, "'")
                                   : absl::StrCat("cp --sparse=always '", from, "' '", disk, "'");
    if (Sh(cmd) != 0) return absl::InternalError(cmd);
    return ChownForJail(disk, jail.uid, jail.gid);
  }

  void ExpectTicksContinue(Vmm& vmm, uint64_t after_tick) {
    absl::StatusOr<e2e::Tick> t = e2e::WaitForOkTicks(vmm.console(), 0, 2, after_tick, kTickTimeout);
    EXPECT_THAT(t.status(), IsOk()) << vmm.options().id << vmm.RecentOutput();
    EXPECT_OK(vmm.CheckRunning());
  }

  // Kills `vmm` and checks that its process, jail and cgroups are gone.
  void KillAndExpectGone(Vmm* vmm) {
    std::vector<std::string> cgroup_dirs = VmCgroupDirs(cgroups_, vmm->cgroup_plan(), vmm->options().id);
    std::string jail_dir = vmm->jail_paths().jail_dir;
    pid_t pid = vmm->pid();
    // Held across the kill, so that a reused pid cannot fool the check.
    int proc_dir = open(absl::StrCat("/proc/", pid).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(proc_dir, 0);
    ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
    EXPECT_TRUE(exit.signaled && exit.value == SIGKILL) << exit.ToString();
    int status_fd = openat(proc_dir, "status", O_RDONLY | O_CLOEXEC);
    EXPECT_LT(status_fd, 0) << "process " << pid << " still there";
    if (status_fd >= 0) close(status_fd);
    close(proc_dir);
    struct stat st;
    EXPECT_NE(stat(jail_dir.c_str(), &st), 0) << jail_dir << " still there";
    for (const std::string& d : cgroup_dirs) EXPECT_NE(stat(d.c_str(), &st), 0) << d << " still there";
  }

  std::optional<FirecrackerBinary> fc_;
  std::optional<JailerBinary> jailer_;
  std::unique_ptr<TempDir> dir_;
  std::string base_;
  std::unique_ptr<UidPool> uids_;
  CgroupHost cgroups_;
  std::string parent_;
  std::vector<std::unique_ptr<Vmm>> vmms_;
};

TEST_F(JailE2E, BootedGuestIsConfined) {
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("boot", DefaultLimits()));
  jail.files = {Kernel()};
  ASSERT_OK(MakeScratchDisk(jail, "boot"));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("boot", jail));
  ASSERT_OK(vmm->Boot(GuestSpec()));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout).status());
  const pid_t pid = vmm->pid();
  const std::string proc = absl::StrCat("/proc/", pid);

  // Its own uid and gid, no capabilities, seccomp on every thread.
  const std::string id_line = absl::StrCat(jail.uid, "\t", jail.uid, "\t", jail.uid, "\t", jail.uid);
  std::map<std::string, std::string> status = ReadStatus(proc + "/status");
  EXPECT_EQ(status["Uid"], id_line);
  EXPECT_EQ(status["Gid"], id_line);
  EXPECT_EQ(status["Groups"], "");
  std::set<std::string> threads;
  ListTree(proc + "/task", "", &threads);
  std::set<std::string> names;
  for (const std::string& t : threads) {
    if (absl::StrContains(t, '/')) continue;
    std::map<std::string, std::string> ts = ReadStatus(absl::StrCat(proc, "/task/", t, "/status"));
    names.insert(ts["Name"]);
    EXPECT_EQ(ts["CapEff"], "0000000000000000") << ts["Name"];
    EXPECT_EQ(ts["CapPrm"], "0000000000000000") << ts["Name"];
    EXPECT_EQ(ts["Seccomp"], "2") << "thread " << t << " " << ts["Name"];
    EXPECT_EQ(ts["NoNewPrivs"], "1") << ts["Name"];
  }
  EXPECT_THAT(names, Contains("fc_vcpu 0"));
  EXPECT_THAT(names, Contains("fc_api"));

  // Its root is the chroot, which holds only this VM's files.
  struct stat root_st, chroot_st;
  ASSERT_EQ(stat((proc + "/root").c_str(), &root_st), 0);
  ASSERT_EQ(stat(vmm->jail_paths().chroot_dir.c_str(), &chroot_st), 0);
  EXPECT_EQ(root_st.st_ino, chroot_st.st_ino);
  EXPECT_EQ(root_st.st_dev, chroot_st.st_dev);
  std::set<std::string> files;
  ListTree(proc + "/root", "", &files);
  const std::set<std::string> allowed = {"dev",
                                         "dev/kvm",
                                         "dev/net",
                                         "dev/net/tun",
                                         "dev/urandom",
                                         "dev/userfaultfd",
                                         "run",
                                         "run/firecracker.socket",
                                         "firecracker",
                                         "firecracker.pid",
                                         "vmlinux",
                                         "scratch.img",
                                         "firecracker.log",
                                         "metrics.json"};
  for (const std::string& f : files) EXPECT_TRUE(allowed.count(f)) << "unexpected file in the jail: " << f;
  for (const char* f : {"vmlinux", "scratch.img", "dev/kvm", "run/firecracker.socket", "firecracker"}) {
    EXPECT_TRUE(files.count(f)) << f << " missing from the jail";
  }
  // The API socket, log and metrics are where Vmm says.
  EXPECT_EQ(vmm->api_socket_path(), vmm->jail_paths().chroot_dir + "/run/firecracker.socket");
  EXPECT_EQ(InodeOf(vmm->log_path()), InodeOf(vmm->jail_paths().chroot_dir + "/firecracker.log"));

  // Its own PID namespace, where it is PID 1.
  EXPECT_NE(ReadLink(proc + "/ns/pid"), ReadLink("/proc/self/ns/pid"));
  EXPECT_EQ(status["NSpid"], absl::StrCat(pid, "\t1"));

  // The cgroup limits read back, and the process is in that cgroup.
  ASSERT_OK_AND_ASSIGN(CgroupLimits read, vmm->ReadCgroupLimits());
  EXPECT_EQ(read.memory_bytes, MinMemoryBytes(e2e::kGuestMemMib));
  EXPECT_EQ(read.cpu_quota_us, 100000u);
  EXPECT_EQ(read.cpu_period_us, 100000u);
  EXPECT_EQ(read.cpu_weight, 100u);
  EXPECT_EQ(read.pids_max, 16u);
  std::vector<std::string> cg_dirs = VmCgroupDirs(cgroups_, vmm->cgroup_plan(), "boot");
  ASSERT_FALSE(cg_dirs.empty());
  for (const std::string& d : cg_dirs) {
    ASSERT_OK_AND_ASSIGN(std::string procs, ReadFile(d + "/cgroup.procs"));
    EXPECT_EQ(procs, absl::StrCat(pid, "\n")) << d;
  }
  // Raised on the running VM (as a warm-pool entry becoming a bigger VM).
  ASSERT_OK(vmm->UpdateCgroupLimits(
      {.memory_bytes = MinMemoryBytes(e2e::kGuestMemMib) + (64 << 20), .pids_max = 32}));
  ASSERT_OK_AND_ASSIGN(read, vmm->ReadCgroupLimits());
  EXPECT_EQ(read.memory_bytes, MinMemoryBytes(e2e::kGuestMemMib) + (64 << 20));
  EXPECT_EQ(read.pids_max, 32u);
  EXPECT_EQ(read.cpu_quota_us, 100000u);
  std::printf("cgroups: %s\njailer args: %s\n", absl::StrJoin(cg_dirs, " ").c_str(),
              absl::StrJoin(vmm->cgroup_plan().JailerArgs(), " ").c_str());

  // Another uid (another VM's, or nobody) can neither read its disk nor
  // reach its API; root can (the paths are right).
  ASSERT_OK_AND_ASSIGN(std::string disk, vmm->HostPath("/scratch.img"));
  ASSERT_OK_AND_ASSIGN(uint32_t other, uids_->Lease("other"));
  for (uint32_t uid : {other, 65534u}) {
    auto [open_err, connect_err] = TryAs(uid, uid, disk, vmm->api_socket_path());
    EXPECT_EQ(open_err, EACCES) << "uid " << uid << " opening " << disk;
    EXPECT_EQ(connect_err, EACCES) << "uid " << uid << " connecting to " << vmm->api_socket_path();
  }
  auto [root_open, root_connect] = TryAs(0, 0, disk, vmm->api_socket_path());
  EXPECT_EQ(root_open, 0);
  EXPECT_EQ(root_connect, 0);

  // As PID 1 of its namespace it ignores SIGTERM from the host.
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  uint64_t line = vmm->console().line_count();
  EXPECT_OK(e2e::WaitForOkTicks(vmm->console(), line, 1, 0, kTickTimeout).status());
  EXPECT_OK(vmm->CheckRunning());

  KillAndExpectGone(vmm);
}

TEST_F(JailE2E, SnapshotRestoredInOtherJails) {
  // The golden VM, jailed, writes its snapshot inside its chroot.
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("golden", DefaultLimits()));
  jail.files = {Kernel()};
  ASSERT_OK(MakeScratchDisk(jail, "golden"));
  ASSERT_OK_AND_ASSIGN(Vmm * golden, Launch("golden", jail));
  ASSERT_OK(golden->Boot(GuestSpec()));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(golden->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(golden->console(), ready, 1, 0, kTickTimeout).status());
  ASSERT_OK(golden->api().Pause());
  ASSERT_OK(golden->CreateSnapshot({.snapshot_path = "/snap.vmstate", .mem_file_path = "/snap.mem"}));
  const uint64_t last_tick = e2e::LastTick(golden->console());
  // Out of the jail, root-owned, readable by the clones' uids.
  const std::string vmstate = dir_->path() + "/golden.vmstate", mem = dir_->path() + "/golden.mem",
                    disk = dir_->path() + "/golden.disk";
  for (const auto& [jail_path, dest] : std::vector<std::pair<std::string, std::string>>{
           {"/snap.vmstate", vmstate}, {"/snap.mem", mem}, {"/scratch.img", disk}}) {
    ASSERT_OK_AND_ASSIGN(std::string host, golden->HostPath(jail_path));
    ASSERT_OK(TakeFromJail(host, dest, 0644));
    struct stat st;
    ASSERT_EQ(stat(dest.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
  }
  KillAndExpectGone(golden);

  // File backend, in a new jail with another uid: its own disk at the jail
  // path baked into the snapshot.
  ASSERT_OK_AND_ASSIGN(JailOptions file_jail, Jail("clone-file", DefaultLimits()));
  EXPECT_NE(file_jail.uid, jail.uid);
  file_jail.files = {{.host_path = vmstate, .jail_path = "/snap.vmstate"},
                     {.host_path = mem, .jail_path = "/snap.mem"}};
  ASSERT_OK(MakeScratchDisk(file_jail, "clone-file", disk));
  ASSERT_OK_AND_ASSIGN(Vmm * file_clone, Launch("clone-file", file_jail));
  ASSERT_OK(file_clone->LoadSnapshot({.snapshot_path = "/snap.vmstate",
                                      .backend = MemBackend::kFile,
                                      .backend_path = "/snap.mem",
                                      .resume_vm = true}));
  ExpectTicksContinue(*file_clone, last_tick);
  ASSERT_OK_AND_ASSIGN(std::string clone_disk, file_clone->HostPath("/scratch.img"));
  EXPECT_EQ(OpenFileInode(file_clone->pid(), "/scratch.img"), InodeOf(clone_disk));
  EXPECT_NE(InodeOf(clone_disk), InodeOf(disk));
  // The memory file is shared with the golden copy (a hard link, so the page
  // cache is shared between clones).
  ASSERT_OK_AND_ASSIGN(std::string linked_mem, file_clone->HostPath("/snap.mem"));
  EXPECT_EQ(InodeOf(linked_mem), InodeOf(mem));

  // Uffd backend, served by lib/uffd's page server listening inside the
  // clone's chroot (host path), in a third jail.
  ASSERT_OK_AND_ASSIGN(JailOptions uffd_jail, Jail("clone-uffd", DefaultLimits()));
  uffd_jail.files = {{.host_path = vmstate, .jail_path = "/snap.vmstate"}};
  ASSERT_OK(MakeScratchDisk(uffd_jail, "clone-uffd", disk));
  ASSERT_OK_AND_ASSIGN(Vmm * uffd_clone, Launch("clone-uffd", uffd_jail));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<uffd::PageServer> server, uffd::PageServer::Create({.threads = 1}));
  ASSERT_OK_AND_ASSIGN(std::string socket, uffd_clone->HostPath("/uffd.sock"));
  // 0666 is safe here: only root and the VM's uid can enter the chroot.
  ASSERT_OK(server
                ->AddListener({.socket_path = socket,
                               .files = {.mem_file_path = mem},
                               .on_failure = uffd::FailurePolicy::kDrop,
                               .socket_mode = 0666,
                               .tag = "clone-uffd"})
                .status());
  ASSERT_OK(uffd_clone->LoadSnapshot({.snapshot_path = "/snap.vmstate",
                                      .backend = MemBackend::kUffd,
                                      .backend_path = "/uffd.sock",
                                      .resume_vm = true}));
  ExpectTicksContinue(*uffd_clone, last_tick);
  EXPECT_GT(server->GetStats().total.faults, 0u);
  EXPECT_NE(uffd_clone->options().jail->uid, file_clone->options().jail->uid);

  KillAndExpectGone(file_clone);
  KillAndExpectGone(uffd_clone);
  server->Stop();
}

TEST_F(JailE2E, FilesFromAnotherFileSystemAreBindMountedInvisibly) {
  // The kernel on a tmpfs: it cannot be hard-linked into the chroot, so the
  // launch bind-mounts it in the jailer's private mount namespace.
  std::string tmpfs = dir_->path() + "/tmpfs";
  ASSERT_OK(MakeDirs(tmpfs, 0755));
  ASSERT_EQ(mount("tmpfs", tmpfs.c_str(), "tmpfs", 0, "size=16m,mode=0755"), 0) << strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{tmpfs};
  std::string kernel = tmpfs + "/vmlinux";
  ASSERT_EQ(Sh(absl::StrCat("cp '", e2e::GuestPath(), "' '", kernel, "' && chmod 0644 '", kernel, "'")), 0);

  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("bind", DefaultLimits()));
  jail.files = {{.host_path = kernel, .jail_path = "/boot/vmlinux"}};
  ASSERT_OK(MakeScratchDisk(jail, "bind"));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("bind", jail));
  BootSpec spec = GuestSpec();
  spec.boot_source.kernel_image_path = "/boot/vmlinux";
  ASSERT_OK(vmm->Boot(spec));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout).status());
  // The host sees the empty placeholder; Firecracker sees the kernel; no
  // mount on the host mentions the jail.
  ASSERT_OK_AND_ASSIGN(std::string placeholder, vmm->HostPath("/boot/vmlinux"));
  struct stat st;
  ASSERT_EQ(stat(placeholder.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(InodeOf(absl::StrCat("/proc/", vmm->pid(), "/root/boot/vmlinux")), InodeOf(kernel));
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) EXPECT_FALSE(absl::StrContains(line, base_)) << line;
  // Read-only inside the jail even for root.
  int fd = open(absl::StrCat("/proc/", vmm->pid(), "/root/boot/vmlinux").c_str(), O_WRONLY | O_CLOEXEC);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EROFS);
  if (fd >= 0) close(fd);
  KillAndExpectGone(vmm);
}

TEST_F(JailE2E, CgroupV2) {
  // On hybrid hosts the cgroup2 mount has few controllers; hugetlb is the one
  // this kind of host has there. Pure v2 hosts have them all.
  if (cgroups_.v2_mount.empty()) GTEST_SKIP() << "no cgroup2 mount";
  CgroupLimits limits;
  if (cgroups_.v2_controllers.count("memory") && cgroups_.v2_controllers.count("pids")) {
    limits = DefaultLimits();
  } else if (cgroups_.v2_controllers.count("hugetlb")) {
    limits.extra = {{"hugetlb.2MB.max", "4194304"}};
  } else {
    GTEST_SKIP() << "the cgroup2 mount " << cgroups_.v2_mount << " has neither memory+pids nor hugetlb";
  }
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("v2", limits));
  jail.cgroup_version = CgroupVersion::kV2;
  jail.files = {Kernel()};
  ASSERT_OK(MakeScratchDisk(jail, "v2"));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("v2", jail));
  EXPECT_EQ(vmm->cgroup_plan().version, CgroupVersion::kV2);
  ASSERT_OK(vmm->Boot(GuestSpec()));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout).status());
  std::string dir = absl::StrCat(cgroups_.v2_mount, "/", parent_, "/v2");
  ASSERT_OK_AND_ASSIGN(std::string procs, ReadFile(dir + "/cgroup.procs"));
  EXPECT_EQ(procs, absl::StrCat(vmm->pid(), "\n"));
  ASSERT_OK_AND_ASSIGN(CgroupLimits read, vmm->ReadCgroupLimits());
  if (limits.extra.empty()) {
    EXPECT_EQ(read.memory_bytes, limits.memory_bytes);
    EXPECT_EQ(read.pids_max, limits.pids_max);
  } else {
    EXPECT_EQ(read.extra, limits.extra);
  }
  KillAndExpectGone(vmm);
}

TEST_F(JailE2E, MissingControllerIsFailedPrecondition) {
  CgroupLimits limits = DefaultLimits();
  limits.extra = {{"nosuchctl.max", "1"}};
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("noctl", limits));
  jail.files = {Kernel()};
  EXPECT_THAT(Launch("noctl", jail).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("nosuchctl")));
  // Asking v2 for memory on a host whose cgroup2 mount lacks it.
  if (!cgroups_.v2_mount.empty() && !cgroups_.v2_controllers.count("memory")) {
    ASSERT_OK_AND_ASSIGN(JailOptions v2, Jail("v2mem", DefaultLimits()));
    v2.cgroup_version = CgroupVersion::kV2;
    EXPECT_THAT(Launch("v2mem", v2).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         AllOf(HasSubstr("memory"), HasSubstr("not available in " + cgroups_.v2_mount))));
  }
}

TEST_F(JailE2E, LimitsBelowTheGuestsNeedsAreRefused) {
  // Memory: exactly the guest's memory leaves nothing for Firecracker.
  CgroupLimits tight = DefaultLimits();
  tight.memory_bytes = uint64_t{e2e::kGuestMemMib} << 20;
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("tight", tight));
  jail.files = {Kernel()};
  ASSERT_OK(MakeScratchDisk(jail, "tight"));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("tight", jail));
  EXPECT_THAT(vmm->Boot(GuestSpec()), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("memory limit 134217728 bytes is below")));
  EXPECT_OK(vmm->CheckRunning());
  KillAndExpectGone(vmm);

  // Pids: fewer tasks than Firecracker's threads.
  CgroupLimits few = DefaultLimits();
  few.pids_max = 2;
  ASSERT_OK_AND_ASSIGN(JailOptions pids, Jail("pids", few));
  EXPECT_THAT(Launch("pids", pids).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pids limit 2 is below")));

  // Root is not a jail uid.
  ASSERT_OK_AND_ASSIGN(JailOptions root, Jail("root", DefaultLimits()));
  root.uid = 0;
  EXPECT_THAT(Launch("root", root).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-zero")));
}

TEST_F(JailE2E, UnreadableFileIsRefusedAndNothingIsLeft) {
  std::string kernel = dir_->path() + "/private-vmlinux";
  ASSERT_EQ(Sh(absl::StrCat("cp '", e2e::GuestPath(), "' '", kernel, "' && chmod 0600 '", kernel, "'")), 0);
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("unreadable", DefaultLimits()));
  jail.files = {{.host_path = kernel, .jail_path = "/vmlinux"}};
  EXPECT_THAT(
      Launch("unreadable", jail).status(),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("may not read it (owner 0:0 mode 0600)")));
  // The failed launch removed the jail it started (TearDown checks).
}

TEST_F(JailE2E, TapsMustBelongToTheVmsUid) {
  // Jailed, Firecracker has no CAP_NET_ADMIN: it can only attach to a tap
  // that already exists and whose owner (TUNSETOWNER/TUNSETGROUP) is unset or
  // its own uid/gid; it can neither create one nor take another uid's.
  std::string netns = absl::StrCat("fcvm-e2e-jail-", getpid());
  ASSERT_EQ(Sh(absl::StrCat("ip netns add ", netns)), 0);
  struct DelNetns {
    std::string name;
    ~DelNetns() { Sh(absl::StrCat("ip netns del ", name)); }
  } del{netns};
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("tap", DefaultLimits()));
  ASSERT_EQ(Sh(absl::StrCat("ip -n ", netns, " tuntap add fcvm-tap0 mode tap user ", jail.uid, " group ",
                            jail.gid)),
            0);
  ASSERT_EQ(Sh(absl::StrCat("ip -n ", netns, " tuntap add fcvm-tap1 mode tap user ", jail.uid + 1, " group ",
                            jail.gid + 1)),
            0);
  jail.netns_path = "/run/netns/" + netns;
  jail.files = {Kernel()};
  ASSERT_OK(MakeScratchDisk(jail, "tap"));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("tap", jail));
  EXPECT_EQ(InodeOf(absl::StrCat("/proc/", vmm->pid(), "/ns/net")), InodeOf(jail.netns_path))
      << "not in the VM's network namespace";
  absl::Status other_uid = vmm->api().PutNetworkInterface({.iface_id = "eth1", .host_dev_name = "fcvm-tap1"});
  EXPECT_THAT(other_uid, StatusIs(absl::StatusCode::kInvalidArgument,
                                  AllOf(HasSubstr("fcvm-tap1"), HasSubstr("Operation not permitted"))));
  std::printf("another uid's tap: %s\n", std::string(other_uid.message()).c_str());
  EXPECT_THAT(vmm->api().PutNetworkInterface({.iface_id = "eth2", .host_dev_name = "fcvm-nosuch"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Operation not permitted")));
  BootSpec spec = GuestSpec();
  spec.network_interfaces.push_back(
      {.iface_id = "eth0", .host_dev_name = "fcvm-tap0", .guest_mac = "06:00:ac:10:00:02"});
  ASSERT_OK(vmm->Boot(spec));
  ASSERT_OK_AND_ASSIGN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout).status());
  KillAndExpectGone(vmm);
}

TEST_F(JailE2E, JailerFailureIsReported) {
  // The jailer refuses a netns path that does not exist; Firecracker never
  // starts, and the error carries the jailer's stderr.
  ASSERT_OK_AND_ASSIGN(JailOptions jail, Jail("nonetns", DefaultLimits()));
  jail.netns_path = dir_->path() + "/no-such-netns";
  jail.files = {Kernel()};
  absl::StatusOr<Vmm*> vmm = Launch("nonetns", jail);
  EXPECT_THAT(vmm.status(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no-such-netns")));
  std::printf("jailer failure: %s\n", std::string(vmm.status().message()).c_str());
}

}  // namespace
}  // namespace fcvm::firecracker
