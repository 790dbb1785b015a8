// The jail layer without the real jailer: paths, file placement, probe, and
// Vmm's jailed launch with a fake "jailer" script that execs this test binary
// as a fake Firecracker (see vmm_test.cc) on the chroot's socket path. The
// real jailer is exercised by tests/e2e/jail_e2e_test.cc.

#include "lib/firecracker/jail.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/firecracker/vmm.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint32_t kUid = 1879048192 + 4242;

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

struct stat Stat(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) < 0) st.st_ino = 0;
  return st;
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

class JailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/fc-jail-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    // A "firecracker" to name the chroot after: this binary (firecracker_test).
    fc_ = SelfExe();
  }
  void TearDown() override { EXPECT_OK(RemoveTree(dir_)); }

  std::string File(const std::string& name, mode_t mode, const std::string& text = "data") {
    std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path) << text;
    EXPECT_EQ(chmod(path.c_str(), mode), 0);
    return path;
  }

  std::string Script(const std::string& name, const std::string& body, mode_t mode = 0755) {
    return File(name, mode, absl::StrCat("#!/bin/sh\n", body, "\n"));
  }

  JailPaths Paths(const std::string& id = "vm1") {
    absl::StatusOr<JailPaths> p = JailPathsFor(fc_, dir_ + "/jails", id);
    EXPECT_OK(p.status());
    return p.ok() ? *p : JailPaths();
  }

  std::string dir_;
  std::string fc_;
};

TEST_F(JailTest, ProbeJailer) {
  EXPECT_THAT(JailerBinary::Probe(dir_ + "/nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("jailer binary")));
  std::string not_exec = Script("jailer-noexec", "echo 'Jailer v1.7.0'", 0644);
  EXPECT_THAT(JailerBinary::Probe(not_exec),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr(not_exec)));
  std::string old = Script("jailer-old", "echo 'Jailer v1.6.1'");
  EXPECT_THAT(JailerBinary::Probe(old),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("jailer 1.6.1"), HasSubstr("1.7.0 or later"))));
  std::string firecracker = Script("firecracker-as-jailer", "echo 'Firecracker v1.14.2'");
  EXPECT_THAT(JailerBinary::Probe(firecracker),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not Firecracker's jailer")));
  std::string garbage = Script("jailer-garbage", "echo 'hello'");
  EXPECT_THAT(JailerBinary::Probe(garbage),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("hello")));
  std::string good = Script("jailer", "echo 'Jailer v1.7.0'; echo");
  ASSERT_OK_AND_ASSIGN(JailerBinary jailer, JailerBinary::Probe(good));
  EXPECT_EQ(jailer.version(), (Version{1, 7, 0, ""}));
  EXPECT_EQ(jailer.path(), good);
}

TEST_F(JailTest, PathsFollowTheJailersLayout) {
  // The chroot is named after the canonical exec file.
  ASSERT_OK(MakeDirs(dir_ + "/bin", 0755));
  std::string real = File("bin/firecracker-v1.14.2", 0755);
  ASSERT_EQ(symlink(real.c_str(), (dir_ + "/fc").c_str()), 0);
  ASSERT_OK_AND_ASSIGN(JailPaths p, JailPathsFor(dir_ + "/fc", "/srv/jail/", "vm-1"));
  EXPECT_EQ(p.jail_dir, "/srv/jail/firecracker-v1.14.2/vm-1");
  EXPECT_EQ(p.chroot_dir, "/srv/jail/firecracker-v1.14.2/vm-1/root");

  EXPECT_EQ(*p.HostPath("/vmlinux"), "/srv/jail/firecracker-v1.14.2/vm-1/root/vmlinux");
  EXPECT_EQ(*p.HostPath("/drives/a.img"), p.chroot_dir + "/drives/a.img");
  EXPECT_EQ(*p.JailPath(p.chroot_dir + "/drives/a.img"), "/drives/a.img");
  for (const char* bad : {"vmlinux", "/", "", "/a/../b", "/a//b", "/./a", "/a/"}) {
    EXPECT_THAT(p.HostPath(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_THAT(p.JailPath("/srv/jail/firecracker-v1.14.2/vm-1/rootx/a"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(p.JailPath(p.chroot_dir + "/"), StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_THAT(JailPathsFor(real, "/srv", "bad_id").status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(JailPathsFor(real, "/srv", std::string(65, 'a')).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(JailPathsFor(real, "srv", "vm").status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(JailPathsFor(dir_ + "/missing", "/srv", "vm").status(), StatusIs(absl::StatusCode::kNotFound));
  std::string other = File("bin/cloud-hypervisor", 0755);
  EXPECT_THAT(JailPathsFor(other, "/srv", "vm").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"firecracker\"")));
}

TEST_F(JailTest, PrepareJailMakesARootOnlyDirectory) {
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  ASSERT_OK(PrepareJail(p));  // idempotent
  EXPECT_EQ(Stat(p.jail_dir).st_mode & 07777, 0700u);
  EXPECT_TRUE(S_ISDIR(Stat(p.chroot_dir).st_mode));
}

TEST_F(JailTest, ReadOnlyFilesAreHardLinkedWhenTheVmCannotWriteThem) {
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  std::string kernel = File("vmlinux", 0644);
  ASSERT_OK_AND_ASSIGN(std::optional<BindMount> bind,
                       PlaceFile(p, kUid, kUid, {.host_path = kernel, .jail_path = "/boot/vmlinux"}, true));
  EXPECT_FALSE(bind.has_value());
  EXPECT_EQ(Stat(p.chroot_dir + "/boot/vmlinux").st_ino, Stat(kernel).st_ino);
  EXPECT_EQ(Stat(p.chroot_dir + "/boot").st_mode & 07777, 0755u);
  // Placing again (a relaunch) replaces what is there.
  std::string other = File("vmlinux2", 0644);
  ASSERT_OK(PlaceFile(p, kUid, kUid, {.host_path = other, .jail_path = "/boot/vmlinux"}, false).status());
  EXPECT_EQ(Stat(p.chroot_dir + "/boot/vmlinux").st_ino, Stat(other).st_ino);
}

TEST_F(JailTest, ReadOnlyFilesTheVmCouldWriteAreBindMountedReadOnly) {
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  std::string shared = File("world-writable", 0666);
  ASSERT_OK_AND_ASSIGN(std::optional<BindMount> bind,
                       PlaceFile(p, kUid, kUid, {.host_path = shared, .jail_path = "/disk"}, true));
  ASSERT_TRUE(bind.has_value());
  EXPECT_EQ(bind->source, shared);
  EXPECT_EQ(bind->target, p.chroot_dir + "/disk");
  EXPECT_TRUE(bind->read_only);
  // The placeholder the mount covers is an empty root-only file, not a link.
  struct stat st = Stat(p.chroot_dir + "/disk");
  EXPECT_NE(st.st_ino, Stat(shared).st_ino);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // After the launch nothing can be mounted.
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = shared, .jail_path = "/disk2"}, false).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("could write it")));
}

TEST_F(JailTest, FilesOnAnotherFileSystemAreBindMounted) {
  struct stat shm;
  if (stat("/dev/shm", &shm) < 0 || shm.st_dev == Stat(dir_).st_dev)
    GTEST_SKIP() << "no /dev/shm on another fs";
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  std::string tmpl = "/dev/shm/fc-jail-XXXXXX";
  int fd = mkstemp(tmpl.data());
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(chmod(tmpl.c_str(), 0644), 0);
  absl::StatusOr<std::optional<BindMount>> bind =
      PlaceFile(p, kUid, kUid, {.host_path = tmpl, .jail_path = "/vmlinux"}, true);
  absl::StatusOr<std::optional<BindMount>> late =
      PlaceFile(p, kUid, kUid, {.host_path = tmpl, .jail_path = "/late"}, false);
  unlink(tmpl.c_str());
  ASSERT_OK(bind.status());
  ASSERT_TRUE(bind->has_value());
  EXPECT_TRUE((*bind)->read_only);
  EXPECT_THAT(late.status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("another file system")));
}

TEST_F(JailTest, FilesTheVmMayNotUseAreRefused) {
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  std::string secret = File("secret", 0600);
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = secret, .jail_path = "/secret"}, true).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr(secret), HasSubstr("may not read it"), HasSubstr("mode 0600"))));
  std::string readonly = File("readonly", 0644);
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = readonly, .jail_path = "/disk", .writable = true}, true)
                  .status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("may not write it")));
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = dir_ + "/none", .jail_path = "/x"}, true).status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = dir_, .jail_path = "/x"}, true).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a regular file")));
  EXPECT_THAT(PlaceFile(p, kUid, kUid, {.host_path = readonly, .jail_path = "../x"}, true).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(Exists(p.chroot_dir + "/secret"));
}

TEST_F(JailTest, WritableFilesGoToTheVmsUid) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (chown)";
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  // A private disk created in the chroot by the caller.
  std::string disk = p.chroot_dir + "/disk.img";
  std::ofstream(disk) << "disk";
  ASSERT_OK(ChownForJail(disk, kUid, kUid));
  struct stat st = Stat(disk);
  EXPECT_EQ(st.st_uid, kUid);
  EXPECT_EQ(st.st_gid, kUid);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // Already in place: only checked.
  ASSERT_OK_AND_ASSIGN(
      std::optional<BindMount> bind,
      PlaceFile(p, kUid, kUid, {.host_path = disk, .jail_path = "/disk.img", .writable = true}, true));
  EXPECT_FALSE(bind.has_value());
  // Its own file elsewhere on the same fs: linked.
  std::string log = File("fc.log", 0600);
  ASSERT_OK(ChownForJail(log, kUid, kUid));
  ASSERT_OK(
      PlaceFile(p, kUid, kUid, {.host_path = log, .jail_path = "/fc.log", .writable = true}, false).status());
  EXPECT_EQ(Stat(p.chroot_dir + "/fc.log").st_ino, Stat(log).st_ino);
  // Another uid's private file is refused.
  EXPECT_THAT(PlaceFile(p, kUid + 1, kUid + 1, {.host_path = log, .jail_path = "/x", .writable = true}, true)
                  .status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(JailTest, TakeFromJailHandsTheFileToRoot) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (chown)";
  JailPaths p = Paths();
  ASSERT_OK(PrepareJail(p));
  std::string made = p.chroot_dir + "/snap.mem";
  std::ofstream(made) << "memory";
  ASSERT_OK(ChownForJail(made, kUid, kUid, 0600));
  ASSERT_OK(TakeFromJail(made, dir_ + "/snap.mem"));
  struct stat st = Stat(dir_ + "/snap.mem");
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, 0u);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_FALSE(Exists(made));
  EXPECT_THAT(TakeFromJail(made, dir_ + "/again"), StatusIs(absl::StatusCode::kNotFound));

  // Across file systems: copied, then removed from the jail.
  struct stat shm;
  if (stat("/dev/shm", &shm) < 0 || shm.st_dev == Stat(dir_).st_dev) return;
  std::ofstream(made) << "memory2";
  ASSERT_OK(ChownForJail(made, kUid, kUid, 0600));
  std::string dest = absl::StrCat("/dev/shm/fc-jail-take-", getpid());
  absl::Status moved = TakeFromJail(made, dest, 0640);
  absl::StatusOr<std::string> text = ReadFile(dest);
  st = Stat(dest);
  unlink(dest.c_str());
  ASSERT_OK(moved);
  ASSERT_OK(text.status());
  EXPECT_EQ(*text, "memory2");
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_FALSE(Exists(made));
}

TEST_F(JailTest, ListAndRemoveJails) {
  std::string base = dir_ + "/jails";
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> none, ListJails(fc_, base));
  EXPECT_THAT(none, IsEmpty());
  for (const char* id : {"vm-b", "vm-a"}) ASSERT_OK(PrepareJail(Paths(id)));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> ids, ListJails(fc_, base));
  EXPECT_THAT(ids, ElementsAre("vm-a", "vm-b"));
  // With a (fake) cgroup for vm-a in one hierarchy.
  CgroupHost host;
  host.v1_mounts["memory"] = dir_ + "/cg/memory";
  ASSERT_OK(MakeDirs(dir_ + "/cg/memory/fcvm/vm-a", 0755));
  std::ofstream(Paths("vm-a").chroot_dir + "/disk") << "x";
  ASSERT_OK(RemoveJail(Paths("vm-a"), host, "fcvm", "vm-a"));
  EXPECT_FALSE(Exists(Paths("vm-a").jail_dir));
  EXPECT_FALSE(Exists(dir_ + "/cg/memory/fcvm/vm-a"));
  EXPECT_OK(RemoveJail(Paths("vm-a"), host, "fcvm", "vm-a"));  // nothing left: OK
  ASSERT_OK_AND_ASSIGN(ids, ListJails(fc_, base));
  EXPECT_THAT(ids, ElementsAre("vm-b"));
}

// ------------------------------------------------- Vmm with a fake jailer

// The fake jailer records its arguments, creates the chroot's run/ like the
// real one and execs the fake Firecracker (this binary) on the chroot's
// socket, without any chroot, uid change or cgroup.
constexpr char kFakeJailer[] = R"sh(if [ "$1" = --version ]; then echo 'Jailer v1.7.0'; exit 0; fi
for a in "$@"; do echo "$a"; done > "$(dirname "$0")/jailer.args"
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exe=$2; shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --) shift; break;;
    *) shift;;
  esac
done
if [ -e "$(dirname "$0")/fail" ]; then echo "fake jailer: failing as asked" >&2; exit 1; fi
root="$base/$(basename "$(readlink -f "$exe")")/$id/root"
mkdir -p "$root/run"
exec "$exe" --api-sock "$root/run/firecracker.socket" --id "$id")sh";

class JailedVmmTest : public JailTest {
 protected:
  void SetUp() override {
    JailTest::SetUp();
    if (geteuid() != 0) GTEST_SKIP() << "needs root (the VM's files are chowned to its uid)";
    ASSERT_OK_AND_ASSIGN(FirecrackerBinary fc, FirecrackerBinary::Probe(fc_));
    fc_bin_ = fc;
    ASSERT_OK_AND_ASSIGN(JailerBinary jailer, JailerBinary::Probe(Script("jailer", kFakeJailer)));
    jailer_ = jailer;
    // A fake cgroup host, so that no real cgroup is touched.
    host_.v1_mounts["memory"] = dir_ + "/cg/memory";
    host_.v1_mounts["pids"] = dir_ + "/cg/pids";
    host_.v1_mounts["cpu"] = dir_ + "/cg/cpu";
  }

  VmmOptions Options(const std::string& id) {
    return {.vm_dir = absl::StrCat(dir_, "/vms/", id),
            .id = id,
            .start_timeout = absl::Seconds(10),
            .parent_death_signal = SIGKILL,
            .jail = JailOptions{.jailer = jailer_,
                                .chroot_base_dir = dir_ + "/jails",
                                .uid = kUid,
                                .gid = kUid + 1,
                                .new_pid_ns = false,
                                .limits = {.memory_bytes = 256 << 20, .pids_max = 10},
                                .cgroup_host = host_,
                                .files = {{.host_path = File("vmlinux", 0644), .jail_path = "/vmlinux"}}}};
  }

  std::vector<std::string> JailerArgs() {
    absl::StatusOr<std::string> text = ReadFile(dir_ + "/jailer.args");
    if (!text.ok()) return {};
    return absl::StrSplit(*text, '\n', absl::SkipEmpty());
  }

  std::optional<FirecrackerBinary> fc_bin_;
  std::optional<JailerBinary> jailer_;
  CgroupHost host_;
};

TEST_F(JailedVmmTest, LaunchRunsTheJailerAndKillRemovesTheJail) {
  VmmOptions options = Options("vm1");
  // A console log left by an earlier, more permissive fcvm gets the new mode.
  ASSERT_OK(MakeDirs(options.vm_dir, 0750));
  std::ofstream(options.vm_dir + "/console.log") << "old";
  ASSERT_EQ(chmod((options.vm_dir + "/console.log").c_str(), 0644), 0);
  // What the real jailer would have created for the cgroups.
  ASSERT_OK(MakeDirs(dir_ + "/cg/memory/fcvm/vm1", 0755));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(*fc_bin_, options));
  const JailPaths& p = vmm->jail_paths();
  EXPECT_EQ(p.chroot_dir, absl::StrCat(dir_, "/jails/firecracker_test/vm1/root"));
  EXPECT_EQ(vmm->api_socket_path(), p.chroot_dir + "/run/firecracker.socket");
  EXPECT_EQ(*vmm->HostPath("/vmlinux"), p.chroot_dir + "/vmlinux");
  EXPECT_EQ(*vmm->JailPath(p.chroot_dir + "/a/b"), "/a/b");
  EXPECT_TRUE(vmm->jailed());
  ASSERT_OK_AND_ASSIGN(InstanceInfo info, vmm->api().GetInstanceInfo());
  EXPECT_EQ(info.id, "vm1");
  ASSERT_OK(vmm->console()
                .WaitForLine([](absl::string_view l) { return l == "FAKE CONSOLE hello"; }, 0,
                             absl::Now() + absl::Seconds(10))
                .status());

  std::vector<std::string> args = JailerArgs();
  std::vector<std::string> want = {"--id",
                                   "vm1",
                                   "--exec-file",
                                   fc_,
                                   "--uid",
                                   absl::StrCat(kUid),
                                   "--gid",
                                   absl::StrCat(kUid + 1),
                                   "--chroot-base-dir",
                                   dir_ + "/jails",
                                   "--cgroup-version",
                                   "1",
                                   "--parent-cgroup",
                                   "fcvm",
                                   "--cgroup",
                                   "memory.limit_in_bytes=268435456",
                                   "--cgroup",
                                   "pids.max=10",
                                   "--",
                                   "--api-sock",
                                   "/run/firecracker.socket",
                                   "--log-path",
                                   "/firecracker.log",
                                   "--level",
                                   "Info",
                                   "--show-level",
                                   "--metrics-path",
                                   "/metrics.json"};
  EXPECT_EQ(args, want);

  // The VM's files: kernel linked, log and metrics its own (0600), linked
  // from vm_dir; fcvm's own files 0640 root.
  EXPECT_EQ(Stat(p.chroot_dir + "/vmlinux").st_ino, Stat(dir_ + "/vmlinux").st_ino);
  for (const char* f : {"firecracker.log", "metrics.json"}) {
    struct stat st = Stat(absl::StrCat(options.vm_dir, "/", f));
    EXPECT_EQ(st.st_uid, kUid) << f;
    EXPECT_EQ(st.st_gid, kUid + 1) << f;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << f;
    EXPECT_EQ(Stat(absl::StrCat(p.chroot_dir, "/", f)).st_ino, st.st_ino) << f;
  }
  for (const char* f : {"console.log", "firecracker.stderr"}) {
    struct stat st = Stat(absl::StrCat(options.vm_dir, "/", f));
    EXPECT_EQ(st.st_uid, 0u) << f;
    EXPECT_EQ(st.st_mode & 07777, 0640u) << f;
  }
  EXPECT_EQ(Stat(p.jail_dir).st_mode & 07777, 0700u);

  ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
  EXPECT_TRUE(exit.signaled);
  EXPECT_FALSE(Exists(p.jail_dir));
  EXPECT_FALSE(Exists(dir_ + "/cg/memory/fcvm/vm1"));
  EXPECT_TRUE(Exists(options.vm_dir + "/firecracker.log")) << "logs outlive the jail";
  EXPECT_OK(vmm->Kill().status());  // idempotent
}

TEST_F(JailedVmmTest, UpdateCgroupLimits) {
  // What the real jailer would have created and written.
  ASSERT_OK(MakeDirs(dir_ + "/cg/memory/fcvm/vm1", 0755));
  ASSERT_OK(MakeDirs(dir_ + "/cg/pids/fcvm/vm1", 0755));
  std::ofstream(dir_ + "/cg/memory/fcvm/vm1/memory.limit_in_bytes") << (256 << 20) << "\n";
  std::ofstream(dir_ + "/cg/pids/fcvm/vm1/pids.max") << "10\n";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(*fc_bin_, Options("vm1")));
  ASSERT_OK(vmm->UpdateCgroupLimits({.memory_bytes = 512 << 20}));
  ASSERT_OK_AND_ASSIGN(std::string mem, ReadFile(dir_ + "/cg/memory/fcvm/vm1/memory.limit_in_bytes"));
  EXPECT_EQ(mem, absl::StrCat(512 << 20, "\n"));
  ASSERT_OK_AND_ASSIGN(CgroupLimits read, vmm->ReadCgroupLimits());
  EXPECT_EQ(read.memory_bytes, uint64_t{512} << 20);
  EXPECT_EQ(read.pids_max, 10u) << "untouched";
  EXPECT_EQ(vmm->options().jail->limits.memory_bytes, uint64_t{512} << 20);
  // A controller the VM's cgroups were not made with.
  EXPECT_THAT(vmm->UpdateCgroupLimits({.cpu_weight = 50}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no cpu controller")));
  // Real cgroup directories have no files to remove; these do.
  unlink((dir_ + "/cg/memory/fcvm/vm1/memory.limit_in_bytes").c_str());
  unlink((dir_ + "/cg/pids/fcvm/vm1/pids.max").c_str());
  ASSERT_OK(vmm->Kill().status());
  EXPECT_FALSE(Exists(dir_ + "/cg/memory/fcvm/vm1"));
}

TEST_F(JailedVmmTest, NewPidNamespace) {
  VmmOptions options = Options("vm1");
  options.jail->new_pid_ns = true;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(*fc_bin_, options));
  std::ifstream status(absl::StrCat("/proc/", vmm->pid(), "/status"));
  std::string line, nspid;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "NSpid:")) nspid = line;
  }
  EXPECT_EQ(nspid, absl::StrCat("NSpid:	", vmm->pid(), "	1"));
  // Our own child: the exit status is known.
  ASSERT_OK_AND_ASSIGN(ExitStatus exit, vmm->Kill());
  EXPECT_TRUE(exit.known);
  EXPECT_TRUE(exit.signaled && exit.value == SIGKILL);
}

TEST_F(JailedVmmTest, FailuresLeaveNothing) {
  VmmOptions options = Options("vm1");
  // The jailer fails: its stderr is in the error, the jail is gone.
  File("fail", 0644);
  absl::StatusOr<std::unique_ptr<Vmm>> failed = Vmm::Launch(*fc_bin_, options);
  unlink((dir_ + "/fail").c_str());
  EXPECT_THAT(failed.status(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("failing as asked")));
  EXPECT_FALSE(Exists(dir_ + "/jails/firecracker_test/vm1"));

  auto launch = [&](VmmOptions o) { return Vmm::Launch(*fc_bin_, std::move(o)).status(); };
  VmmOptions root = Options("vm2");
  root.jail->uid = 0;
  EXPECT_THAT(launch(root), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-zero")));
  VmmOptions no_jailer = Options("vm2");
  no_jailer.jail->jailer.reset();
  EXPECT_THAT(launch(no_jailer), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("jailer")));
  VmmOptions binds = Options("vm2");
  binds.bind_mounts = {{dir_ + "/vmlinux", dir_ + "/vmlinux"}};
  EXPECT_THAT(launch(binds), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("jail.files")));
  VmmOptions pids = Options("vm2");
  pids.jail->limits.pids_max = 3;
  EXPECT_THAT(launch(pids), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pids limit 3")));
  VmmOptions noctl = Options("vm2");
  noctl.jail->limits.extra = {{"nosuchctl.max", "max"}};
  EXPECT_THAT(launch(noctl),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("controller nosuchctl")));
  VmmOptions unreadable = Options("vm2");
  unreadable.jail->files.push_back({.host_path = File("secret", 0600), .jail_path = "/secret"});
  EXPECT_THAT(launch(unreadable), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("may not read")));
  EXPECT_FALSE(Exists(dir_ + "/jails/firecracker_test/vm2")) << "a failed launch removes the jail it made";
}

TEST_F(JailedVmmTest, AJailInUseIsNotTouched) {
  // The cgroup of "vm1" holds a process (this one): another launch with the
  // same id must not tear its jail down.
  ASSERT_OK(MakeDirs(dir_ + "/cg/memory/fcvm/vm1", 0755));
  std::ofstream(dir_ + "/cg/memory/fcvm/vm1/cgroup.procs") << getpid() << "\n";
  ASSERT_OK(PrepareJail(Paths("vm1")));
  std::ofstream(Paths("vm1").chroot_dir + "/disk") << "precious";
  EXPECT_THAT(Vmm::Launch(*fc_bin_, Options("vm1")).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
  EXPECT_TRUE(Exists(Paths("vm1").chroot_dir + "/disk"));
}

TEST_F(JailedVmmTest, DetachLeavesTheJail) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm, Vmm::Launch(*fc_bin_, Options("vm1")));
  std::string jail_dir = vmm->jail_paths().jail_dir;
  ASSERT_OK_AND_ASSIGN(Process adopted, Process::Adopt(vmm->Detach()));
  vmm.reset();
  EXPECT_TRUE(Exists(jail_dir));
  ASSERT_OK(adopted.Kill().status());
  ASSERT_OK(RemoveJail(Paths("vm1"), host_, "fcvm", "vm1"));
}

}  // namespace
}  // namespace fcvm::firecracker
