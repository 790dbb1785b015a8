// fcvmd crashes and restarts while its VMs keep running (issue 13): booted
// VMs and File clones outlive `kill -9 fcvmd` and a clean stop, are
// re-adopted by the next fcvmd on the same state directory, and their
// consoles keep being captured. Real Firecracker and the test guest, through
// fcvmd and fcvmctl; jailed unless the jailer is missing (or
// FCVM_JAILER_BIN points nowhere). Skips without Firecracker or /dev/kvm.

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using json = nlohmann::json;
using Result = ::fcvm::testing::CommandResult;
using ::fcvm::testing::RunCommand;

// OK ticks in a console log and its rotated predecessor.
int OkTicks(const std::string& console_log, int* bad) {
  static const std::regex kTick("^FCVM-GUEST TICK ([0-9]+) (OK|BAD)( |$)");
  int ok = 0;
  *bad = 0;
  std::string text = ReadFile(console_log + ".1").value_or("") + ReadFile(console_log).value_or("");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string l(line);
    std::smatch m;
    if (std::regex_search(l, m, kTick)) (m[2] == "OK" ? ok : *bad)++;
  }
  return ok;
}

std::vector<std::string> DirEntries(const std::string& path) {
  std::vector<std::string> out;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    closedir(d);
  }
  return out;
}

class FcvmdRestartE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    socket_ = tmp_.path() + "/fcvmd.sock";
    ASSERT_NO_FATAL_FAILURE(PrepareStateDir());
    started_ = true;
    StartDaemon();
  }

  virtual void PrepareStateDir() {}
  virtual void ReleaseStateDir() {}

  void StartDaemon() { ASSERT_OK_AND_ASSIGN(daemon_, e2e::StartFcvmd(FCVMD_PATH, tmp_.path(), extra_args_)); }

  void TearDown() override {
    if (!started_) return;
    if (daemon_.valid()) {
      ASSERT_OK(daemon_.Signal(SIGTERM));
      ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
      EXPECT_TRUE(st.success()) << st.ToString() << "\n" << DaemonLog();
    }
    ReleaseStateDir();
    std::vector<std::string> left = e2e::Leftovers(tmp_.path(), "fcvm");
    // Jails (chroots) and the VM directories go with their VMs.
    for (const std::string& j : DirEntries(tmp_.path() + "/state/jail/firecracker"))
      left.push_back("jail " + j);
    for (const std::string& v : DirEntries(tmp_.path() + "/state/vms")) left.push_back("vm dir " + v);
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
  }

  std::string DaemonLog() { return ReadFile(tmp_.path() + "/fcvmd.log").value_or(""); }

  json Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_, "--json"});
    Result r = RunCommand(args);
    EXPECT_EQ(r.code, 0) << absl::StrJoin(args, " ") << "\n" << r.err << r.out << DaemonLog();
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  // Waits until `console` holds at least `n` OK ticks and no BAD one.
  void AwaitTicks(const std::string& what, const std::string& console, int n) {
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    int bad = 0, ok = 0;
    while ((ok = OkTicks(console, &bad)) < n && bad == 0 && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(100));
    EXPECT_EQ(bad, 0) << what << ": " << ReadFile(console).value_or("");
    EXPECT_GE(ok, n) << what << " stopped ticking: " << ReadFile(console).value_or("") << "\n" << DaemonLog();
  }

  // Every VM is listed running, and each guest ticks on past where it was.
  void ExpectAllRunningAndTicking(const std::vector<std::string>& names, const std::string& when) {
    json ls = Ctl({"ls"});
    ASSERT_EQ(ls["vms"].size(), names.size()) << when << ": " << ls.dump();
    for (const json& vm : ls["vms"]) {
      EXPECT_EQ(vm["state"], "VM_STATE_RUNNING") << when << ": " << vm.dump();
    }
    for (const std::string& name : names) {
      json vm = Ctl({"get", name});
      std::string console = vm["console_log_path"];
      int bad = 0;
      int before = OkTicks(console, &bad);
      AwaitTicks(absl::StrCat(name, " ", when), console, before + 2);
    }
  }

  e2e::TempDir tmp_;
  std::string socket_;
  Process daemon_;
  bool started_ = false;
  std::vector<std::string> extra_args_;
};

// 2 booted VMs and 2 File clones (made from warm-pool processes unless
// jailed boots skip the pool) survive kill -9 of fcvmd and then a clean
// stop; each time the next fcvmd lists all 4 running and their guests keep
// ticking into the console logs. Deleting them leaves nothing behind.
// Before: the VMs in warm-pool processes died with fcvmd (parent-death
// signal) or were stopped by the clean stop, and no re-adopted VM's console
// was captured any more.
TEST_F(FcvmdRestartE2eTest, BootedVmsAndFileClonesSurviveCrashAndCleanStop) {
  std::vector<std::string> names = {"boot-a", "boot-b"};
  for (const std::string& name : names) {
    json vm = Ctl({"run", "--name", name, "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs,
                   "--memory-mib", "128"});
    ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
    AwaitTicks(name, vm["console_log_path"], 1);
  }
  ASSERT_EQ(Ctl({"snapshot", "create", "boot-a", "--name", "golden"})["name"], "golden");
  json clones = Ctl({"clone", "golden", "--count", "2", "--backend", "file"});
  ASSERT_EQ(clones["succeeded"], 2) << clones.dump();
  for (const json& c : clones["clones"]) {
    names.push_back(c["name"]);
    AwaitTicks(c["name"], c["console_log_path"], 1);
  }
  ExpectAllRunningAndTicking(names, "before any restart");

  // kill -9: nothing of fcvmd runs its shutdown.
  ASSERT_OK(daemon_.Signal(SIGKILL));
  ASSERT_OK(daemon_.Wait(absl::Seconds(10)).status());
  absl::Time down = absl::Now();
  // The scenario, not a synchronisation: fcvmd stays down for a few guest
  // ticks, printed into console FIFOs that nobody reads (Firecracker's
  // writes fail with EPIPE, which it must survive).
  absl::SleepFor(absl::Seconds(3));
  StartDaemon();
  std::cout << "fcvmd back " << absl::FormatDuration(absl::Now() - down) << " after kill -9\n";
  ExpectAllRunningAndTicking(names, "after kill -9 and restart");

  // A clean stop leaves them running too.
  ASSERT_OK(daemon_.Signal(SIGTERM));
  absl::Time stop = absl::Now();
  ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
  EXPECT_TRUE(st.success()) << st.ToString();
  std::cout << "fcvmd stopped cleanly in " << absl::FormatDuration(absl::Now() - stop) << " with 4 VMs\n";
  StartDaemon();
  ExpectAllRunningAndTicking(names, "after a clean stop and restart");

  std::vector<std::string> rm = {FCVMCTL_PATH, "--socket", socket_, "rm"};
  rm.insert(rm.end(), names.begin(), names.end());
  Result r = RunCommand(rm);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(RunCommand({FCVMCTL_PATH, "--socket", socket_, "snapshot", "rm", "golden"}).code, 0);
  EXPECT_TRUE(Ctl({"ls"})["vms"].empty());
}

// The state directory on a small tmpfs, filled up after the snapshot.
class FullDiskE2eTest : public FcvmdRestartE2eTest {
 protected:
  void PrepareStateDir() override {
    extra_args_ = {"--warm-pool", "0"};  // only the VMs of the test in vms/
    state_ = tmp_.path() + "/state";
    ASSERT_OK(MakeDirs(state_, 0700));
    // Room for the 128 MiB snapshot (and, jailed, its hard links).
    if (mount("tmpfs", state_.c_str(), "tmpfs", 0, "size=192m,mode=0700") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs at " << state_ << ": " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void ReleaseStateDir() override {
    if (mounted_ && umount(state_.c_str()) != 0)
      ADD_FAILURE() << "umount " << state_ << ": " << std::strerror(errno);
    mounted_ = false;
  }

  // Writes a file until the file system is full.
  void Fill() {
    int fd = open((state_ + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    std::string chunk(1 << 16, 'x');
    while (write(fd, chunk.data(), chunk.size()) > 0) {
    }
    std::string byte = "x";
    while (write(fd, byte.data(), 1) > 0) {
    }
    EXPECT_EQ(errno, ENOSPC);
    close(fd);
  }

  std::string state_;
  bool mounted_ = false;
};

// A full disk while clones are made: the request fails RESOURCE_EXHAUSTED
// naming the file it could not write, and no process, directory, jail,
// socket or mount of the clone is left; the VM that ran before keeps
// running. With room again, cloning works.
TEST_F(FullDiskE2eTest, CloneOnAFullDiskFailsAndLeavesNothing) {
  json vm = Ctl({"run", "--name", "base", "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs,
                 "--memory-mib", "128"});
  ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
  ASSERT_EQ(Ctl({"snapshot", "create", "base", "--name", "golden"})["name"], "golden");
  ASSERT_NO_FATAL_FAILURE(Fill());
  for (const char* backend : {"file", "uffd"}) {
    Result r = RunCommand({FCVMCTL_PATH, "--socket", socket_, "clone", "golden", "--count", "2", "--backend",
                           backend, "--all-or-nothing"});
    EXPECT_EQ(r.code, 1) << backend << ": " << r.out << r.err;
    EXPECT_THAT(r.err, ::testing::HasSubstr("resource exhausted")) << backend;
    EXPECT_THAT(r.err, ::testing::HasSubstr("No space left on device")) << backend;
    EXPECT_THAT(r.err, ::testing::HasSubstr(state_)) << backend << ": the error names the file";
    std::cout << backend << ": " << r.err;
  }
  json ls = Ctl({"ls"});
  ASSERT_EQ(ls["vms"].size(), 1u) << ls.dump();
  EXPECT_EQ(ls["vms"][0]["name"], "base");
  // Nothing of the failed clones: one VM directory, at most one jail (the
  // base VM's jail when jailed); their processes are checked at the end.
  EXPECT_EQ(DirEntries(state_ + "/vms").size(), 1u) << absl::StrJoin(DirEntries(state_ + "/vms"), " ");
  EXPECT_LE(DirEntries(state_ + "/jail/firecracker").size(), 1u)
      << absl::StrJoin(DirEntries(state_ + "/jail/firecracker"), " ");
  ASSERT_EQ(unlink((state_ + "/filler").c_str()), 0);
  json clones = Ctl({"clone", "golden", "--count", "1", "--backend", "file"});
  EXPECT_EQ(clones["succeeded"], 1) << clones.dump();
  std::vector<std::string> rm = {FCVMCTL_PATH, "--socket", socket_, "rm", "base"};
  for (const json& c : clones["clones"]) rm.push_back(c["name"]);
  EXPECT_EQ(RunCommand(rm).code, 0);
  EXPECT_EQ(RunCommand({FCVMCTL_PATH, "--socket", socket_, "snapshot", "rm", "golden"}).code, 0);
}

}  // namespace
}  // namespace fcvm
