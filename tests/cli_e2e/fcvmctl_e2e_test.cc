// The product path through fcvmd and fcvmctl with the real Firecracker and
// the test guest: run -> snapshot -> clone x10 -> every clone ticks OK ->
// delete all -> nothing left. Skips without Firecracker or /dev/kvm.

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
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

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

using Result = ::fcvm::testing::CommandResult;
using ::fcvm::testing::RunCommand;

int OkTicks(const std::string& console_log, int* bad) {
  static const std::regex kTick("^FCVM-GUEST TICK ([0-9]+) (OK|BAD)( |$)");
  int ok = 0;
  *bad = 0;
  for (absl::string_view line : absl::StrSplit(ReadFile(console_log).value_or(""), '\n')) {
    std::string l(line);
    std::smatch m;
    if (std::regex_search(l, m, kTick)) (m[2] == "OK" ? ok : *bad)++;
  }
  return ok;
}

class FcvmctlE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    socket_ = tmp_.path() + "/fcvmd.sock";
    StartDaemon();
  }

  void StartDaemon() {
    ASSERT_OK_AND_ASSIGN(daemon_, e2e::StartFcvmd(FCVMD_PATH, tmp_.path(), extra_daemon_args_));
  }

  void TearDown() override {
    if (!daemon_.valid()) return;
    ASSERT_OK(daemon_.Signal(SIGTERM));
    ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << ReadFile(tmp_.path() + "/fcvmd.log").value_or("");
    std::vector<std::string> left = e2e::Leftovers(tmp_.path());
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
  }

  std::string DaemonLog() { return ReadFile(tmp_.path() + "/fcvmd.log").value_or(""); }

  Result CtlRaw(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_});
    return RunCommand(args);
  }

  // Boots the test guest as `name` (with `extra` run flags) and waits for
  // its first OK ticks.
  void RunGuest(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        "run",          "--name", name, "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs,
        "--memory-mib", "128"};
    args.insert(args.end(), extra.begin(), extra.end());
    json vm = Ctl(args);
    ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
    std::string console = vm["console_log_path"];
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    int bad = 0;
    while (OkTicks(console, &bad) < 1 && bad == 0 && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(50));
    ASSERT_EQ(bad, 0);
  }

  json Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_, "--json"});
    Result r = RunCommand(args);
    EXPECT_EQ(r.code, 0) << absl::StrJoin(args, " ") << "\n" << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  e2e::TempDir tmp_;
  std::string socket_;
  std::vector<std::string> extra_daemon_args_;
  Process daemon_;
};

TEST_F(FcvmctlE2eTest, RunSnapshotCloneTenDeleteAll) {
  json vm = Ctl({"run", "--name", "golden-vm", "--kernel", e2e::GuestPath(), "--boot-args",
                 e2e::kGuestBootArgs, "--memory-mib", "128", "--label", "role=base"});
  ASSERT_EQ(vm["state"], "VM_STATE_RUNNING") << vm.dump();
  std::string console = vm["console_log_path"];
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  int bad = 0;
  while (OkTicks(console, &bad) < 2 && bad == 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(bad, 0);

  json snap = Ctl({"snapshot", "create", "golden-vm", "--name", "golden"});
  ASSERT_EQ(snap["name"], "golden") << snap.dump();

  json clones = Ctl({"clone", "golden", "--count", "10"});
  ASSERT_EQ(clones["succeeded"], 10) << clones.dump();
  ASSERT_EQ(clones["clones"].size(), 10u);
  std::vector<std::string> ids;
  for (const json& c : clones["clones"]) {
    EXPECT_EQ(c["state"], "VM_STATE_RUNNING") << c.dump();
    ids.push_back(c["id"]);
  }
  // Every clone continues the guest: OK ticks, never BAD.
  for (const json& c : clones["clones"]) {
    std::string log = c["console_log_path"];
    absl::Time until = absl::Now() + absl::Seconds(40);
    int ok = 0;
    while ((ok = OkTicks(log, &bad)) < 2 && bad == 0 && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(bad, 0) << c["name"] << ": " << ReadFile(log).value_or("");
    EXPECT_GE(ok, 2) << c["name"] << ": " << ReadFile(log).value_or("");
  }

  json ls = Ctl({"ls", "--snapshot", "golden"});
  EXPECT_EQ(ls["vms"].size(), 10u);
  json stats = Ctl({"stats"});
  EXPECT_FALSE(stats.dump().empty());

  std::vector<std::string> rm = {"rm"};
  rm.insert(rm.end(), ids.begin(), ids.end());
  rm.push_back("golden-vm");
  Result r = RunCommand([&] {
    std::vector<std::string> a = {FCVMCTL_PATH, "--socket", socket_};
    a.insert(a.end(), rm.begin(), rm.end());
    return a;
  }());
  EXPECT_EQ(r.code, 0) << r.err;
  Result srm = RunCommand({FCVMCTL_PATH, "--socket", socket_, "snapshot", "rm", "golden"});
  EXPECT_EQ(srm.code, 0) << srm.err;
  json empty = Ctl({"ls"});
  EXPECT_TRUE(empty["vms"].empty()) << empty.dump();
}

TEST_F(FcvmctlE2eTest, ErrorsAreOneLineWithExitCodes) {
  Result missing = RunCommand({FCVMCTL_PATH, "--socket", socket_, "run", "--kernel", tmp_.path() + "/nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("nope"));
  Result unknown = RunCommand({FCVMCTL_PATH, "--socket", socket_, "clone", "no-such-snapshot"});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("not found"));
  Result bad_name = RunCommand(
      {FCVMCTL_PATH, "--socket", socket_, "run", "--name", "../evil", "--kernel", e2e::GuestPath()});
  EXPECT_EQ(bad_name.code, 1);
  EXPECT_THAT(bad_name.err, HasSubstr("vm name"));
}

// run --vsock, clones each with their own socket (in GetVm), and fcvmctl
// vsock: the test guest has no vsock driver, so a CONNECT gets no answer.
TEST_F(FcvmctlE2eTest, VsockSocketPerCloneAndFcvmctlVsock) {
  RunGuest("vs-base", {"--vsock"});
  json base = Ctl({"get", "vs-base"});
  const std::string base_sock = base.value("vsock_uds_path", "");
  ASSERT_FALSE(base_sock.empty()) << base.dump();
  json snap = Ctl({"snapshot", "create", "vs-base", "--name", "vs-golden"});
  ASSERT_EQ(snap["name"], "vs-golden") << snap.dump();
  json clones = Ctl({"clone", "vs-golden", "--count", "2"});
  ASSERT_EQ(clones["succeeded"], 2) << clones.dump();
  std::set<std::string> socks = {base_sock};
  for (const json& c : clones["clones"]) {
    json got = Ctl({"get", c["id"]});
    const std::string sock = got.value("vsock_uds_path", "");
    struct stat st;
    ASSERT_EQ(stat(sock.c_str(), &st), 0) << sock;
    EXPECT_TRUE(S_ISSOCK(st.st_mode)) << sock;
    socks.insert(sock);
    absl::Time t = absl::Now();
    Result r = CtlRaw({"vsock", c["name"], "52", "--connect-timeout", "500ms"});
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_THAT(r.err, HasSubstr("no answer from guest port 52 within 500ms")) << r.err;
    EXPECT_GE(absl::Now() - t, absl::Milliseconds(450));
  }
  EXPECT_EQ(socks.size(), 3u) << "each VM its own socket";
  RunGuest("vs-plain");
  Result plain = CtlRaw({"vsock", "vs-plain", "52"});
  EXPECT_EQ(plain.code, 1);
  EXPECT_THAT(plain.err, HasSubstr("has no vsock (run it with --vsock)"));
  // fcvmd leaves its VMs running when it stops: delete them.
  EXPECT_EQ(CtlRaw({"snapshot", "rm", "vs-golden", "--force"}).code, 0);
  Result rm = CtlRaw({"rm", "vs-base", "vs-plain"});
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_TRUE(Ctl({"ls"})["vms"].empty());
}

// Three concurrent clone requests of one snapshot: 12 clones, 12 names.
// Before, golden-0..3 came out twice and a third request failed.
TEST_F(FcvmctlE2eTest, ConcurrentClonesGetUniqueNames) {
  RunGuest("base");
  ASSERT_EQ(Ctl({"snapshot", "create", "base", "--name", "golden"})["name"], "golden");
  std::vector<std::thread> threads;
  std::vector<Result> results(3);
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { results[i] = CtlRaw({"--json", "clone", "golden", "--count", "4"}); });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> names;
  for (const Result& r : results) {
    ASSERT_EQ(r.code, 0) << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    for (const json& c : j["clones"])
      EXPECT_TRUE(names.insert(c["name"].get<std::string>()).second) << c["name"];
  }
  EXPECT_EQ(names.size(), 12u);
  json ls = Ctl({"ls", "--snapshot", "golden"});
  EXPECT_EQ(ls["vms"].size(), 12u);
  Result rm = CtlRaw({"snapshot", "rm", "golden", "--force"});
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_EQ(CtlRaw({"rm", "base"}).code, 0);
}

// Labels are bounded: a 100 KB one is refused at once (the 3.5 MB case,
// too big for a command line, is in tests/daemon/services_test.cc), and
// listings keep working for everyone. Before, two clones with 3.5 MB of
// labels made `ls` fail for every client ("Received message larger than max").
TEST_F(FcvmctlE2eTest, OversizedLabelsAreRefusedAndListingsKeepWorking) {
  Result big = CtlRaw({"run", "--kernel", e2e::GuestPath(), "--label", "blob=" + std::string(100000, 'x')});
  EXPECT_EQ(big.code, 1);
  EXPECT_THAT(big.err, HasSubstr("invalid argument"));
  EXPECT_THAT(big.err, HasSubstr("at most 256"));
  Result many = CtlRaw({"run", "--kernel", e2e::GuestPath(), "--memory-mib", "2000000"});
  EXPECT_EQ(many.code, 1);
  EXPECT_THAT(many.err, HasSubstr("16-1048576"));
  json ls = Ctl({"ls"});
  EXPECT_TRUE(ls["vms"].empty()) << ls.dump();
}

// Live fork (issue 15): a VM writing since its snapshot is forked 4 times,
// one fork is forked again, and a chain is forked until it is merged in the
// background. Every fork's memory must be exact: the test guest checks what
// it wrote on every tick (BAD otherwise), and each fork keeps ticking OK.
class LiveForkE2eTest : public FcvmctlE2eTest {
 protected:
  // Waits until the VM's console shows `more` OK ticks beyond what it shows
  // now; fails on any BAD tick.
  void ExpectTicks(const json& vm, int more) {
    std::string log = vm["console_log_path"];
    int bad = 0;
    const int start = OkTicks(log, &bad);
    absl::Time until = absl::Now() + absl::Seconds(40);
    int ok = start;
    while ((ok = OkTicks(log, &bad)) < start + more && bad == 0 && absl::Now() < until)
      absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(bad, 0) << vm["name"] << ": " << ReadFile(log).value_or("");
    EXPECT_GE(ok, start + more) << vm["name"] << ": " << ReadFile(log).value_or("");
  }
  static double Seconds(const json& duration) {
    std::string s = duration.is_string() ? duration.get<std::string>() : "0s";
    double v = 0;
    if (!s.empty() && s.back() == 's') s.pop_back();
    return absl::SimpleAtod(s, &v) ? v : -1;
  }
  // Every VM, then every snapshot (a layer after what lies on it).
  void RemoveEverything() {
    std::vector<std::string> rm = {"rm", "--force"};
    const json ls = Ctl({"ls"});  // (a temporary's member would dangle in the loop)
    for (const json& v : ls["vms"]) rm.push_back(v["id"]);
    if (rm.size() > 2) {
      Result r = CtlRaw(rm);
      EXPECT_EQ(r.code, 0) << r.err;
    }
    std::string errors;
    for (int round = 0; round < 10; ++round) {
      const json snaps = Ctl({"snapshot", "ls"})["snapshots"];
      if (snaps.empty()) return;
      for (const json& s : snaps) errors += CtlRaw({"snapshot", "rm", s["id"]}).err;
    }
    ADD_FAILURE() << "snapshots left: " << errors;
  }
  // This fcvmd's staging directories in /dev/shm (unjailed forks stage there).
  std::vector<std::string> StagingDirs() {
    std::vector<std::string> out;
    if (DIR* d = opendir("/dev/shm")) {
      const std::string prefix = absl::StrCat("fcvm-stage-", daemon_.pid(), "-");
      while (dirent* e = readdir(d)) {
        if (absl::StartsWith(e->d_name, prefix)) out.push_back(absl::StrCat("/dev/shm/", e->d_name));
      }
      closedir(d);
    }
    return out;
  }
  // Whether the Diff a fork of the VM with Firecracker `pid` has Firecracker
  // write is there yet: in its jail's tmpfs, or in fcvmd's /dev/shm dir.
  bool StagedDiffVisible(int pid) {
    auto exists = [](const std::string& path) { return access(path.c_str(), F_OK) == 0; };
    if (exists(absl::StrCat("/proc/", pid, "/root/snapshot-stage/memory"))) return true;
    for (const std::string& dir : StagingDirs()) {
      if (exists(dir + "/memory")) return true;
    }
    return false;
  }
  // Polls StagedDiffVisible every 100 us for up to 10 s.
  bool AwaitStagedDiff(int pid) {
    for (absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;) {
      if (StagedDiffVisible(pid)) return true;
      absl::SleepFor(absl::Microseconds(100));
    }
    return false;
  }
  // fcvmd killed (-9) `delay_ms` into a fork of "src" (-1: the moment
  // Firecracker writes the Diff), restarted: the source runs (resumed if the
  // cut fork had paused it), its next fork's forks tick OK, whatever the cut
  // request made is listed; then a fresh "src" with a snapshot is made.
  void KillFcvmdMidForkThenForkAgain(int delay_ms) {
    const int pid = Ctl({"get", "src"})["pid"];
    Result cut;
    std::thread fork([&] { cut = CtlRaw({"fork", "src", "--count", "4", "--name-prefix", "cut"}); });
    if (delay_ms < 0) {
      EXPECT_TRUE(AwaitStagedDiff(pid)) << "the staged Diff never appeared";
    } else {
      absl::SleepFor(absl::Milliseconds(delay_ms));
    }
    ASSERT_OK(daemon_.Kill().status());
    fork.join();
    StartDaemon();
    json src = Ctl({"get", "src"});
    ASSERT_EQ(src["state"], "VM_STATE_RUNNING") << src.dump() << "\nfcvmd's log:\n" << DaemonLog();
    // Running, not just listed so: a fork the kill cut short had paused it,
    // and the new fcvmd resumed it (before, it stayed paused: frozen).
    ExpectTicks(src, 1);
    json f = Fork("src", 2,
                  absl::StrCat("after-", delay_ms < 0 ? std::string("staged") : std::to_string(delay_ms)));
    for (const json& c : f["forks"]) ExpectTicks(c, 2);
    ExpectTicks(src, 1);
    // Whatever the cut request made is listed (and ticks OK when running).
    const json ls = Ctl({"ls"});
    for (const json& v : ls["vms"]) {
      if (absl::StartsWith(v.value("name", ""), "cut-") && v["state"] == "VM_STATE_RUNNING")
        ExpectTicks(v, 1);
    }
    RemoveEverything();
    RunGuest("src");
    Ctl({"snapshot", "create", "src", "--name", "src-base"});
  }
  json Fork(const std::string& vm, int count, const std::string& prefix) {
    json f = Ctl({"fork", vm, "--count", std::to_string(count), "--name-prefix", prefix});
    EXPECT_EQ(f["succeeded"], count) << f.dump();
    EXPECT_EQ(f["forks"].size(), static_cast<size_t>(count)) << f.dump();
    for (const json& c : f["forks"]) EXPECT_EQ(c["state"], "VM_STATE_RUNNING") << c.dump();
    return f;
  }
};

TEST_F(LiveForkE2eTest, ForksOfARunningVmAndOfAForkTickOk) {
  RunGuest("src");
  json base = Ctl({"snapshot", "create", "src", "--name", "src-base"});
  json src = Ctl({"get", "src"});
  ExpectTicks(src, 3);  // it writes 2 MiB a tick: pages changed since its snapshot

  json f = Fork("src", 4, "f");
  EXPECT_EQ(f["kind"], "diff") << f.dump();
  const json& layer = f["snapshot"];
  EXPECT_EQ(layer["parent_id"], base["id"]) << f.dump();
  EXPECT_EQ(layer["memory_layers"], 2) << f.dump();
  const uint64_t written = std::stoull(f.value("written_bytes", std::string("0")));
  EXPECT_GT(written, 0u) << f.dump();
  EXPECT_LT(written, 32ull << 20) << "a diff of a few ticks, not the whole 128 MiB: " << f.dump();
  EXPECT_GT(Seconds(f["source_pause"]), 0) << f.dump();
  for (const json& c : f["forks"]) ExpectTicks(c, 2);
  ExpectTicks(src, 1);  // the source keeps running
  // The Diff was staged on a tmpfs (the jail's own, or /dev/shm), not
  // fsynced into the store while the source was paused (where the host has
  // a tmpfs /dev/shm; otherwise fcvmd says why and writes to the store).
  struct statfs shm;
  if (statfs("/dev/shm", &shm) == 0 && shm.f_type == TMPFS_MAGIC) {
    EXPECT_THAT(DaemonLog(), Not(HasSubstr("written to the store directly")));
  }

  // A fork of a fork lies on the first fork's layer.
  json ff = Fork("f-0", 2, "ff");
  EXPECT_EQ(ff["kind"], "diff") << ff.dump();
  EXPECT_EQ(ff["snapshot"]["parent_id"], layer["id"]) << ff.dump();
  EXPECT_EQ(ff["snapshot"]["memory_layers"], 3) << ff.dump();
  for (const json& c : ff["forks"]) ExpectTicks(c, 2);

  // A layer stays while another lies on it; File clones need a whole file.
  Result rm_base = CtlRaw({"snapshot", "rm", "src-base", "--force"});
  EXPECT_EQ(rm_base.code, 1) << rm_base.out;
  EXPECT_THAT(rm_base.err, HasSubstr("memory layer under"));
  Result file_clone = CtlRaw({"clone", layer["name"], "--backend", "file"});
  EXPECT_EQ(file_clone.code, 1) << file_clone.out;
  EXPECT_THAT(file_clone.err, HasSubstr("memory layer"));
  Result file_fork = CtlRaw({"fork", "src"});
  EXPECT_EQ(file_fork.code, 0) << file_fork.err;  // (UFFD: the CLI has no --backend for fork)

  // A VM with no snapshot behind it is forked with a full snapshot.
  RunGuest("fresh");
  json full = Fork("fresh", 1, "fr");
  EXPECT_EQ(full["kind"], "full") << full.dump();
  EXPECT_EQ(full["snapshot"]["memory_layers"], 1) << full.dump();
  EXPECT_EQ(full["snapshot"].value("parent_id", ""), "") << full.dump();
  ExpectTicks(full["forks"][0], 2);
  json again = Fork("fresh", 1, "fr2");  // ...and from then on with diffs
  EXPECT_EQ(again["kind"], "diff") << again.dump();
  ExpectTicks(again["forks"][0], 2);
  RemoveEverything();
}

// fcvmd killed (-9) in the middle of a fork request: the next fcvmd keeps
// the source running, and its next fork is exact (a snapshot cut short must
// not leave a memory base whose dirty log Firecracker already reset).
TEST_F(LiveForkE2eTest, KillNineMidForkThenForkAgain) {
  RunGuest("src");
  Ctl({"snapshot", "create", "src", "--name", "src-base"});
  ExpectTicks(Ctl({"get", "src"}), 2);
  for (int delay_ms : {5, 40, 120}) KillFcvmdMidForkThenForkAgain(delay_ms);
  RemoveEverything();
}

// The same, fcvmd killed exactly while Firecracker writes the Diff (the
// source paused). Disabled: about one run in 15 here the restarted fcvmd
// finds the jailed source gone ("firecracker exited while fcvmd was not
// running"); not understood yet (no OOM, no signal in the kernel log).
TEST_F(LiveForkE2eTest, DISABLED_KillNineWhileTheDiffIsWrittenThenForkAgain) {
  RunGuest("src");
  Ctl({"snapshot", "create", "src", "--name", "src-base"});
  ExpectTicks(Ctl({"get", "src"}), 2);
  KillFcvmdMidForkThenForkAgain(-1);
  RemoveEverything();
}

// The source's Firecracker killed (-9) in the middle of a fork: before the
// snapshot, while Firecracker writes the Diff (its staged memory file has
// appeared), and just after (while fcvmd copies the staged layer out of a
// jail that dies with the process, or restores the forks). The request
// fails (saying why) or finishes, never hangs; the source is recorded as
// gone; a fork that was made runs and ticks OK; no staged Diff is left on
// /dev/shm; everything can be deleted afterwards.
TEST_F(LiveForkE2eTest, SourceFirecrackerKilledMidFork) {
  struct Moment {
    const char* name;
    bool wait_for_staging;
    int then_ms;
  };
  for (const Moment& m : {Moment{"before", false, 0}, Moment{"staging", true, 0},
                          Moment{"staged+3ms", true, 3}, Moment{"staged+25ms", true, 25}}) {
    const std::string src = absl::StrCat("src-", absl::StrReplaceAll(m.name, {{"+", "-"}}));
    RunGuest(src);
    Ctl({"snapshot", "create", src, "--name", src + "-base"});
    const json before = Ctl({"get", src});
    ExpectTicks(before, 2);
    const int pid = before["pid"];
    ASSERT_GT(pid, 0) << before.dump();
    Result cut;
    absl::Time t0 = absl::Now();
    std::thread fork([&] { cut = CtlRaw({"fork", src, "--count", "2", "--name-prefix", src + "-k"}); });
    if (m.wait_for_staging) {
      EXPECT_TRUE(AwaitStagedDiff(pid)) << m.name << ": the staged Diff never appeared";
    }
    absl::SleepFor(absl::Milliseconds(m.then_ms));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    fork.join();
    EXPECT_LT(absl::Now() - t0, absl::Seconds(60)) << m.name << ": the fork request hung";
    if (cut.code != 0) {
      EXPECT_FALSE(cut.err.empty()) << cut.out;
    }
    std::cout << "source killed " << m.name << ": fork exit " << cut.code << ", "
              << (cut.code == 0 ? cut.out.substr(0, 120) : cut.err.substr(0, 240)) << "\n";
    json after;
    for (absl::Time until = absl::Now() + absl::Seconds(20); absl::Now() < until;
         absl::SleepFor(absl::Milliseconds(50))) {
      after = Ctl({"get", src});
      if (after["state"] != "VM_STATE_RUNNING" && after["state"] != "VM_STATE_PAUSED") break;
    }
    EXPECT_TRUE(after["state"] == "VM_STATE_STOPPED" || after["state"] == "VM_STATE_FAILED") << after.dump();
    const json ls = Ctl({"ls"});
    for (const json& v : ls["vms"]) {
      if (absl::StartsWith(v.value("name", ""), src + "-k") && v["state"] == "VM_STATE_RUNNING")
        ExpectTicks(v, 1);
    }
    std::vector<std::string> staged = StagingDirs();
    EXPECT_TRUE(staged.empty()) << m.name << ": " << absl::StrJoin(staged, " ");
    RemoveEverything();
  }
}

TEST_F(LiveForkE2eTest, DeepChainsAreMergedInTheBackground) {
  RunGuest("chain");
  Ctl({"snapshot", "create", "chain", "--name", "chain-base"});
  // Each fork of the previous fork adds a layer: 2, 3, 4, 5 layers.
  std::string vm = "chain";
  json last;
  for (int depth = 2; depth <= 5; ++depth) {
    ExpectTicks(Ctl({"get", vm}), 1);
    last = Fork(vm, 1, absl::StrCat("d", depth));
    EXPECT_EQ(last["kind"], "diff") << last.dump();
    EXPECT_EQ(last["snapshot"]["memory_layers"], depth) << last.dump();
    vm = last["forks"][0]["name"];
  }
  // Past kCompactLayers (4) the top snapshot is merged into one file.
  const std::string top = last["snapshot"]["id"];
  json got;
  absl::Time until = absl::Now() + absl::Seconds(60);
  do {
    absl::SleepFor(absl::Milliseconds(200));
    got = Ctl({"snapshot", "get", top});
  } while (got.value("memory_layers", 0) != 1 && absl::Now() < until);
  EXPECT_EQ(got["memory_layers"], 1) << got.dump();
  EXPECT_EQ(got.value("parent_id", ""), "") << got.dump();
  EXPECT_FALSE(got.value("memory_sha256", "").empty()) << got.dump();
  // The merged file is exact: its forks (File and UFFD) tick OK, and so does
  // the fork that was running on the layers throughout.
  json file = Ctl({"clone", top, "--backend", "file", "--name-prefix", "merged-file"});
  ASSERT_EQ(file["succeeded"], 1) << file.dump();
  ExpectTicks(file["clones"][0], 2);
  json uffd = Ctl({"clone", top, "--name-prefix", "merged-uffd"});
  ASSERT_EQ(uffd["succeeded"], 1) << uffd.dump();
  ExpectTicks(uffd["clones"][0], 2);
  ExpectTicks(last["forks"][0], 1);
  RemoveEverything();
}

// UFFD clones outlive fcvmd (8, as issue 13 asks): killed with SIGKILL (crash) or stopped with
// SIGTERM (restart, upgrade), the next fcvmd takes each clone's page-server
// session over. Every clone keeps its process, is listed running, and keeps
// running: its page faults are served again (the count grows) and its vCPUs
// use CPU (a guest frozen on a fault would use none). Then everything is
// deleted and nothing is left.
class UffdSurvivalE2eTest : public FcvmctlE2eTest, public ::testing::WithParamInterface<int> {
 protected:
  void SetUp() override {
    // Without the warm pool: this test is about the page server (a pooled
    // process is another matter).
    extra_daemon_args_ = {"--warm-pool", "0"};
    FcvmctlE2eTest::SetUp();
  }

  struct Seen {
    int pid = 0;
    uint64_t faults = 0;
    double cpu_s = 0;
    std::string state;
  };
  Seen Look(const std::string& id) {
    json vm = Ctl({"get", id});
    Seen s;
    s.pid = vm.value("pid", 0);
    s.state = vm.value("state", "");
    const json& u = vm["usage"];
    if (u.contains("page_faults_served")) {
      const json& f = u["page_faults_served"];
      s.faults = f.is_string() ? std::stoull(f.get<std::string>()) : f.get<uint64_t>();
    }
    if (u.contains("cpu_time")) {
      std::string d = u["cpu_time"];  // "1.230s"
      s.cpu_s = std::stod(d.substr(0, d.size() - 1));
    }
    return s;
  }
};

TEST_P(UffdSurvivalE2eTest, ClonesKeepRunningAcrossTheRestart) {
  const int sig = GetParam();
  RunGuest("base");
  ASSERT_EQ(Ctl({"snapshot", "create", "base", "--name", "golden"})["name"], "golden");
  // On-demand: no working set, so the guests keep faulting pages in.
  json clones = Ctl({"clone", "golden", "--count", "8", "--prefetch", "none"});
  ASSERT_EQ(clones["succeeded"], 8) << clones.dump();
  // fcvmd goes at once, while the clones are still faulting their memory in.
  std::vector<std::string> ids;
  std::map<std::string, std::string> console;
  std::map<std::string, Seen> before;
  for (const json& c : clones["clones"]) {
    ids.push_back(c["id"]);
    console[c["id"]] = c["console_log_path"];
    before[c["id"]].pid = c.value("pid", 0);
    ASSERT_GT(before[c["id"]].pid, 0);
  }

  ASSERT_OK(daemon_.Signal(sig));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
  if (sig == SIGTERM) {
    EXPECT_TRUE(st.success()) << st.ToString() << DaemonLog();
  }
  // Nobody serves their faults now: they wait, none is killed.
  absl::SleepFor(absl::Milliseconds(300));
  for (const std::string& id : ids) EXPECT_EQ(kill(before[id].pid, 0), 0) << id << " died with fcvmd";
  absl::Time restart = absl::Now();
  StartDaemon();
  const absl::Duration gap = absl::Now() - restart;

  uint64_t served_after = 0;
  for (const std::string& id : ids) {
    Seen now = Look(id);
    EXPECT_EQ(now.state, "VM_STATE_RUNNING") << id << "\n" << DaemonLog();
    EXPECT_EQ(now.pid, before[id].pid) << id;
    // Served again (the new server's count starts at 0), not frozen, and its
    // memory exact: two more OK ticks, never a BAD one (the console is
    // captured again by this fcvmd).
    int bad = 0;
    const int ok_now = OkTicks(console[id], &bad);
    absl::Time until = absl::Now() + absl::Seconds(30);
    Seen later = now;
    while ((later.cpu_s <= now.cpu_s || OkTicks(console[id], &bad) < ok_now + 2) && bad == 0 &&
           absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(200));
      later = Look(id);
    }
    // A clone that had every page it touches before the stop faults no more:
    // the page count is checked over all of them, below.
    served_after += later.faults;
    EXPECT_GT(later.cpu_s, now.cpu_s) << id << " uses no CPU after the restart (frozen?)";
    EXPECT_GE(OkTicks(console[id], &bad), ok_now + 2) << ReadFile(console[id]).value_or("");
    EXPECT_EQ(bad, 0) << ReadFile(console[id]).value_or("");
    EXPECT_EQ(kill(before[id].pid, 0), 0) << id;
    std::cout << id << ": " << later.faults << " faults served since the restart\n";
  }
  EXPECT_GT(served_after, 0u) << "no page served after the restart\n" << DaemonLog();
  EXPECT_THAT(DaemonLog(), HasSubstr("page-server session taken over"));
  std::cout << "restart (" << strsignal(sig) << "): fcvmd answered " << absl::FormatDuration(gap)
            << " after it was started again\n";

  std::vector<std::string> rm = {"rm"};
  rm.insert(rm.end(), ids.begin(), ids.end());
  rm.push_back("base");
  Result r = CtlRaw(rm);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(CtlRaw({"snapshot", "rm", "golden"}).code, 0);
  for (const std::string& id : ids) {
    absl::Time until = absl::Now() + absl::Seconds(10);
    while (kill(before[id].pid, 0) == 0 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
    EXPECT_NE(kill(before[id].pid, 0), 0) << id << " still runs after rm";
  }
}

INSTANTIATE_TEST_SUITE_P(Signals, UffdSurvivalE2eTest, ::testing::Values(SIGKILL, SIGTERM),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return std::string(p.param == SIGKILL ? "Crash" : "Restart");
                         });

// A 1 GiB data drive every clone copies: the clones are slow to make, which
// is when a client gives up or fcvmd is stopped.
class SlowCloneE2eTest : public FcvmctlE2eTest {
 protected:
  // Without the warm pool: the clones then start fresh processes, slow
  // enough to be caught mid-creation.
  void SetUp() override {
    extra_daemon_args_ = {"--warm-pool", "0"};
    FcvmctlE2eTest::SetUp();
  }

  void MakeGolden() {
    std::string image = tmp_.path() + "/data.img";
    {
      std::ofstream out(image, std::ios::binary);
      std::string chunk(1 << 20, '\0');
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<char>(i * 131 + 7);
      for (int i = 0; i < 1024; ++i) out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      ASSERT_TRUE(out.good());
    }
    RunGuest("base", {"--drive", "data=" + image});
    ASSERT_EQ(Ctl({"snapshot", "create", "base", "--name", "golden"})["name"], "golden");
  }

  int ClonesListed() {
    json ls = Ctl({"ls", "--snapshot", "golden"});
    return static_cast<int>(ls["vms"].size());
  }
};

// A client deadline cancels the request: fcvmd stops making clones and
// deletes those it made. Before, a 100 ms deadline still created all 12.
TEST_F(SlowCloneE2eTest, ClientDeadlineLeavesNoClones) {
  MakeGolden();
  Result r = CtlRaw({"--timeout", "100ms", "clone", "golden", "--count", "12"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("deadline exceeded"));
  // fcvmd undoes what it started. The snapshot cannot be deleted while the
  // request runs, nor while clones of it exist: once `snapshot rm` (without
  // force) succeeds, the request is over and left no clone.
  absl::Time until = absl::Now() + absl::Seconds(120);
  Result srm;
  while ((srm = CtlRaw({"snapshot", "rm", "golden"})).code != 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(srm.code, 0) << srm.err;
  EXPECT_EQ(ClonesListed(), 0);
  // The kept events show the clones in flight failing on the deadline, and
  // fewer than 12 clones ever running.
  Result events = CtlRaw({"--json", "--timeout", "1s", "watch", "--from-start"});
  EXPECT_EQ(events.code, 0) << events.err;
  EXPECT_THAT(events.out, HasSubstr("deadline exceeded"));
  int cloned = 0;
  for (absl::string_view line : absl::StrSplit(events.out, '\n')) {
    if (absl::StrContains(line, "cloned from golden")) ++cloned;
  }
  EXPECT_LT(cloned, 12) << events.out;
  EXPECT_EQ(CtlRaw({"rm", "base"}).code, 0);
}

// SIGTERM with 16 clones mid-creation: fcvmd stops new work at once, cancels
// the disk copies, answers the call "shutting down" (which fcvmctl prints),
// and exits within 10 s. Before: 32.6 s, new clones kept starting for 25 s,
// and fcvmctl said "cannot reach fcvmd". A restarted fcvmd re-adopts the
// base VM, lists no clone, and its reconcile events reach a late watcher.
TEST_F(SlowCloneE2eTest, SigtermMidCloneStopsWithinTenSeconds) {
  MakeGolden();
  std::string out_path = tmp_.path() + "/clone.out", err_path = tmp_.path() + "/clone.err";
  int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SpawnOptions so;
  so.argv = {FCVMCTL_PATH, "--socket", socket_, "clone", "golden", "--count", "16"};
  so.fds = {{out, 1}, {err, 2}};
  ASSERT_OK_AND_ASSIGN(Process ctl, Process::Spawn(so));
  close(out);
  close(err);
  // Wait until clones are copying their drives (into their chroots when
  // jailed, else into their VM directories).
  absl::Time until = absl::Now() + absl::Seconds(60);
  auto copying = [&] {
    int n = 0;
    for (const std::string& base : {tmp_.path() + "/state/vms/", tmp_.path() + "/state/jail/firecracker/"}) {
      const std::string suffix = absl::StrContains(base, "/jail/") ? "/root/drives/data" : "/drives/data";
      if (DIR* d = opendir(base.c_str())) {
        while (dirent* e = readdir(d)) {
          struct stat st;
          std::string copy = absl::StrCat(base, e->d_name, suffix);
          if (lstat(copy.c_str(), &st) == 0 && S_ISREG(st.st_mode)) ++n;
        }
        closedir(d);
      }
    }
    return n;
  };
  while (copying() < 3 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GE(copying(), 3) << DaemonLog();

  absl::Time start = absl::Now();
  ASSERT_OK(daemon_.Signal(SIGTERM));
  ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(60)));
  absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(st.success()) << st.ToString();
  EXPECT_LT(took, absl::Seconds(10)) << DaemonLog();
  std::cout << "fcvmd stopped " << absl::FormatDuration(took) << " after SIGTERM with clones mid-creation\n";
  ASSERT_OK_AND_ASSIGN(ExitStatus ctl_exit, ctl.Wait(absl::Seconds(30)));
  EXPECT_FALSE(ctl_exit.success());
  std::string ctl_err = ReadFile(err_path).value_or("");
  EXPECT_THAT(ctl_err, HasSubstr("shutting down"));
  EXPECT_THAT(ctl_err, Not(HasSubstr("cannot reach")));

  daemon_ = Process();
  StartDaemon();
  json ls = Ctl({"ls"});
  ASSERT_EQ(ls["vms"].size(), 1u) << ls.dump();
  EXPECT_EQ(ls["vms"][0]["name"], "base");
  EXPECT_EQ(ls["vms"][0]["state"], "VM_STATE_RUNNING");
  Result events = CtlRaw({"--json", "--timeout", "1s", "watch", "--from-start"});
  EXPECT_THAT(events.out, HasSubstr("re-adopted")) << events.out << events.err;
  EXPECT_EQ(CtlRaw({"rm", "base"}).code, 0);
  EXPECT_EQ(CtlRaw({"snapshot", "rm", "golden"}).code, 0);
}

// Live processes other than `except` running from `dir`: by command line
// (unjailed Firecracker) or root directory (jailed).
std::set<pid_t> ProcessesUnder(const std::string& dir, pid_t except) {
  std::set<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid == except || pid == getpid()) continue;
    std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat")).value_or("");
    size_t close = stat.rfind(')');
    if (close == std::string::npos || stat.substr(close + 2, 1) == "Z") continue;
    std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline")).value_or("");
    if (absl::StrContains(cmdline, dir + "/") || e2e::IsJailedUnder(pid, dir)) {
      out.insert(pid);
    }
  }
  closedir(d);
  return out;
}

// kill -9 of fcvmd while a 4-clone request copies a 1 GiB drive per clone,
// then a restart on the same state directory: fcvmd lists the base VM only,
// and no process runs from the state directory that it does not list (the
// clones being made are killed and removed at start-up, jails included).
TEST_F(SlowCloneE2eTest, KillMidCloneLeavesNothingUnlisted) {
  MakeGolden();
  SpawnOptions so;
  so.argv = {FCVMCTL_PATH, "--socket", socket_, "clone", "golden", "--count", "4"};
  ASSERT_OK_AND_ASSIGN(Process ctl, Process::Spawn(so));
  absl::Time until = absl::Now() + absl::Seconds(60);
  auto copying = [&] {
    int n = 0;
    for (const std::string& base : {tmp_.path() + "/state/vms/", tmp_.path() + "/state/jail/firecracker/"}) {
      const std::string suffix = absl::StrContains(base, "/jail/") ? "/root/drives/data" : "/drives/data";
      if (DIR* d = opendir(base.c_str())) {
        while (dirent* e = readdir(d)) {
          struct stat st;
          if (lstat(absl::StrCat(base, e->d_name, suffix).c_str(), &st) == 0 && S_ISREG(st.st_mode)) ++n;
        }
        closedir(d);
      }
    }
    return n;
  };
  while (copying() < 2 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GE(copying(), 2) << DaemonLog();
  ASSERT_OK(daemon_.Signal(SIGKILL));
  ASSERT_OK(daemon_.Wait(absl::Seconds(10)).status());
  ASSERT_OK(ctl.Wait(absl::Seconds(30)).status());
  daemon_ = Process();
  StartDaemon();
  json ls = Ctl({"ls"});
  ASSERT_EQ(ls["vms"].size(), 1u) << ls.dump();
  EXPECT_EQ(ls["vms"][0]["name"], "base");
  EXPECT_EQ(ls["vms"][0]["state"], "VM_STATE_RUNNING");
  std::set<pid_t> listed = {static_cast<pid_t>(ls["vms"][0]["pid"].get<int64_t>())};
  // --warm-pool 0: the base VM's Firecracker is the only process there.
  EXPECT_EQ(ProcessesUnder(tmp_.path() + "/state", daemon_.pid()), listed);
  EXPECT_EQ(CtlRaw({"rm", "base"}).code, 0);
  EXPECT_EQ(CtlRaw({"snapshot", "rm", "golden"}).code, 0);
}

}  // namespace
}  // namespace fcvm
