// The page server against real userfaultfd, io_uring and processes: fake VMMs
// (fake_vmm.cc) stand in for Firecracker.

#include "lib/uffd/page_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "tests/integration/uffd/uffd_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::uffd {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using namespace ::fcvm::uffd::testing;

constexpr uint64_t kPage = 4096;

class PageServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    mem_ = dir_.File("mem");
    WriteMemFile(mem_, 8 << 20, 1);
    auto server = PageServer::Create({.threads = 2});
    ASSERT_OK(server);
    server_ = std::move(*server);
    server_->SetEventCallback(events_.Callback());
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  ListenerSpec Spec(const std::string& name, const std::string& mem = "") {
    ListenerSpec s;
    s.socket_path = dir_.File(name + ".sock");
    s.files.mem_file_path = mem.empty() ? mem_ : mem;
    s.tag = name;
    s.fault_around_bytes = 0;
    return s;
  }

  ListenerStats StatsOf(ListenerId id) {
    for (auto& l : server_->GetStats().listeners) {
      if (l.id == id) return l;
    }
    ADD_FAILURE() << "no stats for listener " << id;
    return {};
  }

  // Waits until listener `id` has no live session and at least `n` accepted.
  void WaitSessionsGone(ListenerId id, uint32_t n = 1) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      ListenerStats s = StatsOf(id);
      if (s.sessions_total >= n && s.sessions_active == 0) return;
      usleep(2000);
    }
    ADD_FAILURE() << "sessions of listener " << id << " still active";
  }

  TempDir dir_;
  std::string mem_;
  EventLog events_;
  std::unique_ptr<PageServer> server_;
};

TEST_F(PageServerTest, OneCloneByteExactWithZeroElision) {
  ListenerSpec spec = Spec("c1");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  struct stat st;
  ASSERT_EQ(stat(spec.socket_path.c_str(), &st), 0) << "socket must exist when AddListener returns";
  Process p = SpawnFake(spec.socket_path, mem_, {"--threads=4"});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  const uint64_t pages = (8 << 20) / kPage;
  const uint64_t zeros = CountZeroPages(pages, 1);
  EXPECT_GT(zeros, pages / 3);
  // Fault-around off: every page is one fault, zero pages are never copied.
  EXPECT_EQ(s.stats.zero_pages, zeros);
  EXPECT_EQ(s.stats.pages_copied, pages - zeros);
  EXPECT_EQ(s.stats.bytes_copied, (pages - zeros) * kPage);
  EXPECT_GE(s.stats.faults, pages);
  EXPECT_GT(s.stats.p99_us(), 0.0);
  // The socket file is gone once its only expected peer connected.
  EXPECT_NE(stat(spec.socket_path.c_str(), &st), 0);
  auto closed = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == id && e.kind == SessionEventKind::kClosed; });
  ASSERT_TRUE(closed.has_value());
  EXPECT_FALSE(closed->peer_killed);
  ASSERT_OK(server_->RemoveListener(id));
  EXPECT_THAT(server_->RemoveListener(id), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(PageServerTest, WithoutZeroElisionEveryPageIsCopied) {
  ListenerSpec spec = Spec("nz");
  spec.zero_elision = false;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {"--threads=2", "--regions=2"});
  EXPECT_TRUE(WaitChild(p).success());
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  EXPECT_EQ(s.stats.zero_pages, 0u);
  EXPECT_EQ(s.stats.pages_copied, (8u << 20) / kPage);
}

TEST_F(PageServerTest, SixtyFourClonesAtOnce) {
  std::string mem = dir_.File("mem64");
  WriteMemFile(mem, 4 << 20, 7);
  std::vector<ListenerId> ids;
  std::vector<Process> procs;
  for (int i = 0; i < 64; ++i) {
    ListenerSpec spec = Spec("k" + std::to_string(i), mem);
    spec.fault_around_bytes = (i % 2) ? 64 * 1024 : 0;
    ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
    ids.push_back(id);
    procs.push_back(
        SpawnFake(spec.socket_path, mem, {"--threads=2", i % 3 == 0 ? "--regions=2" : "--regions=1"}));
  }
  for (auto& p : procs) {
    ExitStatus ex = WaitChild(p, absl::Seconds(120));
    EXPECT_TRUE(ex.success()) << ex.ToString();
  }
  ServerStats all = server_->GetStats();
  bool found = false;
  for (auto& s : all.snapshots) {
    if (s.mem_file == mem) {
      found = true;
      EXPECT_EQ(s.listeners, 64u);
      EXPECT_GT(s.stats.faults, 0u);
    }
  }
  EXPECT_TRUE(found);
  for (ListenerId id : ids) EXPECT_EQ(StatsOf(id).sessions_total, 1u);
}

TEST_F(PageServerTest, TwoSnapshotsServedAtOnce) {
  std::string mem2 = dir_.File("mem2");
  WriteMemFile(mem2, 6 << 20, 99);
  std::vector<Process> procs;
  for (int i = 0; i < 4; ++i) {
    ListenerSpec a = Spec("a" + std::to_string(i));
    ListenerSpec b = Spec("b" + std::to_string(i), mem2);
    ASSERT_OK(server_->AddListener(a));
    ASSERT_OK(server_->AddListener(b));
    procs.push_back(SpawnFake(a.socket_path, mem_, {"--threads=2"}));
    procs.push_back(SpawnFake(b.socket_path, mem2, {"--threads=2", "--regions=2"}));
  }
  for (auto& p : procs) EXPECT_TRUE(WaitChild(p).success());
  ServerStats all = server_->GetStats();
  int found = 0;
  for (auto& s : all.snapshots) {
    if (s.mem_file == mem_ || s.mem_file == mem2) {
      ++found;
      EXPECT_EQ(s.listeners, 4u);
      EXPECT_GT(s.stats.pages_copied, 0u);
      EXPECT_GT(s.stats.zero_pages, 0u);
    }
  }
  EXPECT_EQ(found, 2);
}

TEST_F(PageServerTest, RemovedRangeReadsZero) {
  ListenerSpec spec = Spec("rm");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {"--threads=2", "--remove=100:300"});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();
  WaitSessionsGone(id);
  EXPECT_GE(StatsOf(id).stats.remove_events, 1u);
}

TEST_F(PageServerTest, RemoveStormCausesEagainThatIsRetried) {
  // A thread drops pages (REMOVE events) while others fault: ioctls then fail
  // with EAGAIN until the events are read. Every checked page must still be
  // right.
  uint64_t eagain = 0;
  for (int attempt = 0; attempt < 5 && eagain == 0; ++attempt) {
    ListenerSpec spec = Spec("storm" + std::to_string(attempt));
    spec.fault_around_bytes = 64 * 1024;
    ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
    Process p = SpawnFake(spec.socket_path, mem_, {"--threads=3", "--remove-storm=4000"});
    ExitStatus ex = WaitChild(p);
    EXPECT_TRUE(ex.success()) << ex.ToString();
    WaitSessionsGone(id);
    ListenerStats s = StatsOf(id);
    EXPECT_GE(s.stats.remove_events, 4000u);
    eagain = s.stats.eagain;
  }
  EXPECT_GT(eagain, 0u) << "no EAGAIN in 5 storms: the retry path was not exercised";
}

TEST_F(PageServerTest, FaultAroundInstallsTheBlock) {
  ListenerSpec spec = Spec("fa");
  spec.fault_around_bytes = 64 * 1024;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {"--threads=1"});
  EXPECT_TRUE(WaitChild(p).success());
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  const uint64_t pages = (8 << 20) / kPage;
  EXPECT_LE(s.stats.faults, pages / 16 + pages / 64);  // about one fault per 16-page block
  EXPECT_EQ(s.stats.pages_copied + s.stats.zero_pages, pages);
}

TEST_F(PageServerTest, RecordThenPrefetch) {
  ListenerSpec rec = Spec("rec");
  rec.policy = ClonePolicy::kRecord;
  ASSERT_OK_AND_ASSIGN(ListenerId rid, server_->AddListener(rec));
  // WaitPrefetchDone returns at once for a non-prefetching clone once it is ready.
  Process p1 = SpawnFake(rec.socket_path, mem_, {"--threads=2", "--touch-pages=600"});
  ASSERT_OK(server_->WaitPrefetchDone(rid, absl::Now() + absl::Seconds(10)));
  EXPECT_TRUE(WaitChild(p1).success());
  WaitSessionsGone(rid);
  ASSERT_OK(server_->RemoveListener(rid));

  ListenerSpec pre = Spec("pre");
  pre.policy = ClonePolicy::kPrefetch;
  ASSERT_OK_AND_ASSIGN(ListenerId pid, server_->AddListener(pre));
  struct stat st;
  ASSERT_EQ(stat((mem_ + ".wset").c_str(), &st), 0) << "working set file beside the snapshot";
  std::string start = dir_.File("start");
  Process p2 =
      SpawnFake(pre.socket_path, mem_, {"--threads=2", "--touch-pages=600", "--start-file=" + start});
  // prefetch-then-resume: wait, then let the clone run.
  ASSERT_OK(server_->WaitPrefetchDone(pid, absl::Now() + absl::Seconds(20)));
  ListenerStats before = StatsOf(pid);
  EXPECT_GE(before.stats.prefetched_pages, 600u);
  EXPECT_EQ(before.stats.faults, 0u);
  {
    int fd = open(start.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    close(fd);
  }
  EXPECT_TRUE(WaitChild(p2).success());
  WaitSessionsGone(pid);
  EXPECT_EQ(StatsOf(pid).stats.faults, 0u) << "every touched page was prefetched";
  auto done = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == pid && e.kind == SessionEventKind::kPrefetchDone; });
  EXPECT_TRUE(done.has_value());
}

TEST_F(PageServerTest, PrefetchPlanMergesTheRecordersBlocksOnce) {
  ASSERT_OK_AND_ASSIGN(auto snap, SnapshotMemory::Open({mem_}));
  EXPECT_EQ(snap->prefetch_plan(), nullptr) << "no working set, no plan";
  const uint64_t last = (8 << 20) / kPage - 1;
  // Pages in first-touch order, recorded with 4-page blocks: blocks 1, 2 and
  // 5 and the file's last block.
  snap->SetWorkingSet({9, 5, 21, 6, last}, 4);
  auto plan = snap->prefetch_plan();
  ASSERT_NE(plan, nullptr);
  ASSERT_EQ(plan->size(), 3u);
  EXPECT_EQ((*plan)[0].begin, 4u);
  EXPECT_EQ((*plan)[0].count, 8u);
  EXPECT_EQ((*plan)[1].begin, 20u);
  EXPECT_EQ((*plan)[1].count, 4u);
  EXPECT_EQ((*plan)[2].begin, last - 3);
  EXPECT_EQ((*plan)[2].count, 4u);
  EXPECT_EQ(snap->prefetch_plan(), plan) << "computed once, shared by every clone";
  snap->SetWorkingSet({0}, 1);
  ASSERT_NE(snap->prefetch_plan(), plan) << "a new working set, a new plan";
  EXPECT_EQ(snap->prefetch_plan()->size(), 1u);
}

// prefetch-then-resume with the work spread over both loop threads: several
// clones at once, two regions each, every byte right and nothing left to
// fault once they run.
TEST_F(PageServerTest, PrefetchSpreadOverLoopsIsByteExact) {
  ListenerSpec rec = Spec("rec2");
  rec.policy = ClonePolicy::kRecord;
  ASSERT_OK_AND_ASSIGN(ListenerId rid, server_->AddListener(rec));
  Process p0 = SpawnFake(rec.socket_path, mem_, {"--threads=2", "--touch-pages=1800", "--regions=2"});
  EXPECT_TRUE(WaitChild(p0).success());
  WaitSessionsGone(rid);
  ASSERT_OK(server_->RemoveListener(rid));

  constexpr int kClones = 3;
  std::string start = dir_.File("start-all");
  std::vector<ListenerId> ids;
  std::vector<Process> procs;
  for (int i = 0; i < kClones; ++i) {
    ListenerSpec pre = Spec(absl::StrCat("spread", i));
    pre.policy = ClonePolicy::kPrefetch;
    pre.paused_during_prefetch = true;
    ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(pre));
    ids.push_back(id);
    procs.push_back(SpawnFake(pre.socket_path, mem_,
                              {"--threads=2", "--touch-pages=1800", "--regions=2", "--start-file=" + start}));
  }
  for (ListenerId id : ids) {
    ASSERT_OK(server_->WaitPrefetchDone(id, absl::Now() + absl::Seconds(20)));
    ListenerStats s = StatsOf(id);
    EXPECT_EQ(s.stats.prefetched_pages, 1800u) << "exactly the recorded pages, each once";
    EXPECT_EQ(s.stats.pages_copied + s.stats.zero_pages, 1800u);
    EXPECT_EQ(s.stats.faults, 0u);
  }
  {
    int fd = open(start.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    close(fd);
  }
  for (Process& p : procs) EXPECT_TRUE(WaitChild(p).success()) << "wrong bytes in a clone";
  for (ListenerId id : ids) {
    WaitSessionsGone(id);
    EXPECT_EQ(StatsOf(id).stats.faults, 0u) << "every touched page was prefetched";
  }
}

TEST_F(PageServerTest, RecordWindowWritesWorkingSetWhileCloneRuns) {
  ListenerSpec rec = Spec("window");
  rec.policy = ClonePolicy::kRecord;
  rec.record_for = absl::Milliseconds(300);
  ASSERT_OK(server_->AddListener(rec));
  std::string ready = dir_.File("ready");
  Process p = SpawnFake(rec.socket_path, mem_,
                        {"--threads=1", "--touch-pages=100", "--hold", "--ready-file=" + ready});
  ASSERT_TRUE(WaitForFile(ready, absl::Seconds(20)));
  ASSERT_TRUE(WaitForFile(mem_ + ".wset", absl::Seconds(10)))
      << "working set not written while the clone runs";
  EXPECT_FALSE(p.TryWait().value().has_value()) << "clone should still be running";
  ASSERT_OK_AND_ASSIGN(auto snap, SnapshotMemory::Open({mem_}));
  ASSERT_NE(snap->working_set(), nullptr);
  EXPECT_GE(snap->working_set()->size(), 100u);
  server_->Stop();
  ExitStatus ex = WaitChild(p, absl::Seconds(10));
  EXPECT_TRUE(ex.signaled) << ex.ToString();
}

TEST_F(PageServerTest, AutoPolicyRecordsFirstThenPrefetches) {
  std::string mem = dir_.File("memauto");
  WriteMemFile(mem, 4 << 20, 5);
  ListenerSpec a = Spec("auto1", mem);
  a.policy = ClonePolicy::kAuto;
  a.fault_around_bytes = 64 * 1024;  // the prefetcher then installs these blocks
  ASSERT_OK_AND_ASSIGN(ListenerId ida, server_->AddListener(a));
  Process p1 = SpawnFake(a.socket_path, mem, {"--threads=2", "--touch-pages=300"});
  EXPECT_TRUE(WaitChild(p1).success());
  auto e1 = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == ida && e.kind == SessionEventKind::kReady; });
  ASSERT_TRUE(e1.has_value());
  EXPECT_EQ(e1->policy, ClonePolicy::kRecord);
  WaitSessionsGone(ida);
  ListenerSpec b = Spec("auto2", mem);
  b.policy = ClonePolicy::kAuto;
  ASSERT_OK_AND_ASSIGN(ListenerId idb, server_->AddListener(b));
  std::string start = dir_.File("go");
  Process p2 = SpawnFake(b.socket_path, mem, {"--threads=2", "--touch-pages=300", "--start-file=" + start});
  ASSERT_OK(server_->WaitPrefetchDone(idb, absl::Now() + absl::Seconds(20)));
  ListenerStats sb = StatsOf(idb);
  // 300 touched pages, recorded as faults on 16-page blocks: the prefetch
  // covers whole blocks (19 blocks = 304 pages), not just the faulting pages.
  EXPECT_EQ(sb.stats.prefetched_pages, 304u);
  auto e2 = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == idb && e.kind == SessionEventKind::kReady; });
  ASSERT_TRUE(e2.has_value());
  EXPECT_EQ(e2->policy, ClonePolicy::kPrefetch);
  {
    int fd = open(start.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    close(fd);
  }
  EXPECT_TRUE(WaitChild(p2).success());
}

TEST_F(PageServerTest, CloneExitingMidFlightDoesNotDisturbOthers) {
  ListenerSpec good = Spec("good");
  ListenerSpec bad = Spec("quitter");
  ASSERT_OK_AND_ASSIGN(ListenerId gid, server_->AddListener(good));
  ASSERT_OK_AND_ASSIGN(ListenerId bid, server_->AddListener(bad));
  Process pg = SpawnFake(good.socket_path, mem_, {"--threads=2", "--touch-delay-us=50"});
  Process pb = SpawnFake(bad.socket_path, mem_, {"--threads=4", "--exit-after=200"});
  ExitStatus eb = WaitChild(pb);
  EXPECT_EQ(eb.value, 7) << eb.ToString();
  EXPECT_TRUE(WaitChild(pg).success());
  WaitSessionsGone(bid);
  WaitSessionsGone(gid);
  auto e = events_.WaitFor(
      [&](const SessionEvent& ev) { return ev.listener == bid && ev.kind == SessionEventKind::kClosed; });
  ASSERT_TRUE(e.has_value());
  EXPECT_FALSE(e->peer_killed);
}

TEST_F(PageServerTest, StoppedServerKillsItsClones) {
  std::vector<Process> procs;
  std::vector<std::string> ready;
  for (int i = 0; i < 4; ++i) {
    ListenerSpec s = Spec("hold" + std::to_string(i));
    ASSERT_OK(server_->AddListener(s));
    ready.push_back(dir_.File("ready" + std::to_string(i)));
    procs.push_back(SpawnFake(
        s.socket_path, mem_, {"--threads=2", "--touch-pages=200", "--hold", "--ready-file=" + ready.back()}));
  }
  for (auto& r : ready) ASSERT_TRUE(WaitForFile(r, absl::Seconds(20))) << r;
  server_->Stop();
  for (auto& p : procs) {
    ExitStatus ex = WaitChild(p, absl::Seconds(10));
    EXPECT_TRUE(ex.signaled && ex.value == SIGKILL) << ex.ToString();
  }
  int killed = 0;
  for (auto& e : events_.All()) killed += e.peer_killed ? 1 : 0;
  EXPECT_EQ(killed, 4);
  EXPECT_THAT(server_->AddListener(Spec("late")), StatusIs(absl::StatusCode::kFailedPrecondition));
}

// A successor server takes a clone over (what fcvmd does after a crash or a
// restart): the first server is detached mid-flight (the clone keeps
// running, its faults wait), the second adopts it from the handshake copy and
// a duplicate of the clone's own userfaultfd, and every page the clone reads,
// before and after, is the memory file's.
TEST_F(PageServerTest, SuccessorAdoptsADetachedCloneMidFlight) {
  ListenerSpec spec = Spec("survivor");
  spec.handshake_copy_path = dir_.File("survivor.handshake");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  // 2048 pages, one fault each, 1 ms apart on 2 threads: about a second.
  Process p = SpawnFake(spec.socket_path, mem_, {"--threads=2", "--touch-delay-us=1000", "--regions=2"});
  ASSERT_TRUE(WaitForFile(spec.handshake_copy_path, absl::Seconds(20)));
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (StatsOf(id).stats.faults < 50 && absl::Now() < deadline) usleep(1000);
  const uint64_t before = StatsOf(id).stats.faults;
  ASSERT_GE(before, 50u);
  ASSERT_OK(server_->DetachListener(id));
  server_->Stop();
  server_.reset();
  // Nobody serves: the clone waits (it is neither killed nor finished).
  usleep(200 * 1000);
  ASSERT_EQ(kill(p.pid(), 0), 0) << "the clone died while nobody served it";
  for (auto& e : events_.All()) EXPECT_FALSE(e.peer_killed);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PageServer> next, PageServer::Create({.threads = 2}));
  EventLog next_events;
  next->SetEventCallback(next_events.Callback());
  AdoptSpec adopt;
  adopt.listener = spec;
  ASSERT_OK_AND_ASSIGN(adopt.handshake, ReadFile(spec.handshake_copy_path));
  ASSERT_OK_AND_ASSIGN(adopt.uffd, TakeUserfaultfd(p.pid()));
  adopt.pid = p.pid();
  ASSERT_OK_AND_ASSIGN(ListenerId nid, next->AdoptSession(std::move(adopt)));
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();  // 3 = a wrong byte somewhere
  auto closed = next_events.WaitFor(
      [&](const SessionEvent& e) { return e.listener == nid && e.kind == SessionEventKind::kClosed; });
  ASSERT_TRUE(closed.has_value());
  EXPECT_FALSE(closed->peer_killed);
  EXPECT_GT(closed->stats.faults, 0u);
  EXPECT_EQ(closed->regions, 2u);
  ASSERT_OK(next->RemoveListener(nid));
  next->Stop();
}

TEST_F(PageServerTest, AdoptionRefusesWhatItCannotServe) {
  ListenerSpec spec = Spec("refused");
  // A process with no userfaultfd.
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pause();
    _exit(0);
  }
  EXPECT_THAT(TakeUserfaultfd(child), StatusIs(absl::StatusCode::kNotFound));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_THAT(TakeUserfaultfd(999999999), StatusIs(absl::StatusCode::kNotFound));

  int own = MakeUserfaultfd();
  ASSERT_GE(own, 0);
  AdoptSpec bad;
  bad.listener = spec;
  bad.handshake = "[{\"base_host_virt_addr\":4096}]";  // fields missing
  bad.uffd = UniqueFd(own);
  bad.pid = getpid();
  EXPECT_THAT(server_->AdoptSession(std::move(bad)), StatusIs(absl::StatusCode::kInvalidArgument));
  AdoptSpec not_uffd;
  not_uffd.listener = spec;
  not_uffd.handshake = "[]";
  not_uffd.uffd = UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  not_uffd.pid = getpid();
  EXPECT_THAT(server_->AdoptSession(std::move(not_uffd)), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(PageServerTest, RemoveListenerKillsItsCloneOnly) {
  ListenerSpec a = Spec("victim");
  ListenerSpec b = Spec("bystander");
  ASSERT_OK_AND_ASSIGN(ListenerId ida, server_->AddListener(a));
  ASSERT_OK(server_->AddListener(b));
  std::string ra = dir_.File("ra");
  Process pa =
      SpawnFake(a.socket_path, mem_, {"--threads=1", "--touch-pages=50", "--hold", "--ready-file=" + ra});
  Process pb = SpawnFake(b.socket_path, mem_, {"--threads=2", "--touch-delay-us=20"});
  ASSERT_TRUE(WaitForFile(ra, absl::Seconds(20)));
  ASSERT_OK(server_->RemoveListener(ida));
  ExitStatus ea = WaitChild(pa, absl::Seconds(10));
  EXPECT_TRUE(ea.signaled && ea.value == SIGKILL) << ea.ToString();
  EXPECT_TRUE(WaitChild(pb).success());
}

TEST_F(PageServerTest, ManyConnectionsOnOneListener) {
  // fcvm-pager's shape: one socket, any number of Firecrackers.
  ListenerSpec s = Spec("pager");
  s.max_connections = 0;
  s.fault_around_bytes = 32 * 1024;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(s));
  std::vector<Process> procs;
  for (int i = 0; i < 12; ++i) procs.push_back(SpawnFake(s.socket_path, mem_, {"--threads=2"}));
  for (auto& p : procs) EXPECT_TRUE(WaitChild(p).success());
  WaitSessionsGone(id, 12);
  EXPECT_EQ(StatsOf(id).sessions_total, 12u);
}

TEST_F(PageServerTest, BadHandshakePeerIsKilled) {
  ListenerSpec s = Spec("badkill");
  s.on_failure = FailurePolicy::kKill;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(s));
  Process p = SpawnFake(s.socket_path, mem_, {"--bad=json"});
  ExitStatus ex = WaitChild(p, absl::Seconds(10));
  EXPECT_TRUE(ex.signaled && ex.value == SIGKILL) << ex.ToString();
  auto e = events_.WaitFor(
      [&](const SessionEvent& ev) { return ev.listener == id && ev.kind == SessionEventKind::kRejected; });
  ASSERT_TRUE(e.has_value());
  EXPECT_TRUE(e->peer_killed);
  EXPECT_THAT(std::string(e->status.message()), HasSubstr("not valid JSON"));
  EXPECT_THAT(server_->WaitPrefetchDone(id, absl::Now() + absl::Seconds(1)),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("not valid JSON")));
}

TEST_F(PageServerTest, InconsistentMappingFailsTheCloneAndKillsIt) {
  // The peer registered more memory than it announced: a fault lands outside
  // every region. That clone is killed; a neighbour is unaffected.
  ListenerSpec liar = Spec("liar");
  ListenerSpec good = Spec("honest");
  ASSERT_OK_AND_ASSIGN(ListenerId lid, server_->AddListener(liar));
  ASSERT_OK(server_->AddListener(good));
  Process pg = SpawnFake(good.socket_path, mem_, {"--threads=2", "--touch-delay-us=20"});
  Process pl = SpawnFake(liar.socket_path, mem_, {"--threads=2", "--lie"});
  ExitStatus el = WaitChild(pl, absl::Seconds(10));
  EXPECT_TRUE(el.signaled && el.value == SIGKILL) << el.ToString();
  auto e = events_.WaitFor(
      [&](const SessionEvent& ev) { return ev.listener == lid && ev.kind == SessionEventKind::kFailed; });
  ASSERT_TRUE(e.has_value());
  EXPECT_TRUE(e->peer_killed);
  EXPECT_THAT(std::string(e->status.message()), HasSubstr("outside every region"));
  EXPECT_TRUE(WaitChild(pg).success());
}

int CountFds() {
  int n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

bool Mapped(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(path) != std::string::npos) return true;
  }
  return false;
}

TEST_F(PageServerTest, HangUpReleasesEverything) {
  const int fds_before = CountFds();
  ListenerSpec spec = Spec("release");
  spec.policy = ClonePolicy::kRecord;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  EXPECT_TRUE(Mapped(mem_));
  {
    Process p = SpawnFake(spec.socket_path, mem_, {"--threads=2", "--touch-pages=500"});
    EXPECT_TRUE(WaitChild(p).success());
  }  // its pidfd is ours, not the server's
  WaitSessionsGone(id);
  // The session's uffd, socket and pidfd are gone (closed at the end of the
  // loop iteration that ended it), and so is the one-connection listener's
  // socket. The listener still holds the snapshot mapping. (The writer thread
  // briefly holds the working-set file and its directory open while it
  // fsyncs them, which can take seconds on a busy disk.)
  auto fds_settle = [&] {
    for (int i = 0; i < 5000 && CountFds() != fds_before; ++i) usleep(2000);
    return CountFds();
  };
  EXPECT_EQ(fds_settle(), fds_before);
  EXPECT_TRUE(Mapped(mem_));
  ASSERT_OK(server_->RemoveListener(id));
  EXPECT_EQ(fds_settle(), fds_before);
  EXPECT_FALSE(Mapped(mem_)) << "the snapshot mapping must go with its last user";
}

TEST_F(PageServerTest, BadSpecsAreRejected) {
  ListenerSpec s = Spec("x");
  s.fault_around_bytes = 3 * 4096;
  EXPECT_THAT(server_->AddListener(s), StatusIs(absl::StatusCode::kInvalidArgument));
  s = Spec("y", dir_.File("missing"));
  EXPECT_THAT(server_->AddListener(s), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(server_->WaitPrefetchDone(12345, absl::Now()), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(PageServerTest, WaitPrefetchDoneTimesOutWithoutPeer) {
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(Spec("lonely")));
  EXPECT_THAT(server_->WaitPrefetchDone(id, absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(PageServerTest, ZeroMapIsKeptBesideTheSnapshotAndReused) {
  ASSERT_OK(server_->AddListener(Spec("zm")));
  struct stat st;
  ASSERT_EQ(stat((mem_ + ".zeromap").c_str(), &st), 0);
  ASSERT_OK_AND_ASSIGN(auto snap, SnapshotMemory::Open({mem_}));
  EXPECT_TRUE(snap->zero_map_loaded());
  EXPECT_EQ(snap->zero_pages(), CountZeroPages((8 << 20) / kPage, 1));
  // A rewritten memory file makes the map stale: recomputed.
  usleep(20000);  // a new mtime
  WriteMemFile(mem_, 8 << 20, 2);
  ASSERT_OK_AND_ASSIGN(auto snap2, SnapshotMemory::Open({mem_}));
  EXPECT_EQ(snap2->zero_pages(), CountZeroPages((8 << 20) / kPage, 2));
}

// Live fork's layered memory: a whole bottom file and sparse layers above it
// are one view, each page from the topmost layer that holds it (a page of
// zeros written into a layer hides the data under it).
TEST(SnapshotMemoryLayers, EachPageComesFromTheTopmostLayerThatHoldsIt) {
  ::fcvm::testing::TempDir dir("layers");
  const uint64_t pages = 64;
  auto page_of = [](char c) { return std::string(kPage, c); };
  auto sparse = [&](const std::string& path, const std::vector<std::pair<uint64_t, char>>& writes) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, pages * kPage), 0);
    for (const auto& [page, c] : writes) {
      std::string data = page_of(c);
      ASSERT_EQ(pwrite(fd, data.data(), kPage, static_cast<off_t>(page * kPage)),
                static_cast<ssize_t>(kPage));
    }
    close(fd);
  };
  const std::string base = dir.path() + "/base", mid = dir.path() + "/mid", top = dir.path() + "/top";
  std::vector<std::pair<uint64_t, char>> every;
  for (uint64_t p = 0; p < pages; ++p) every.push_back({p, 'b'});
  sparse(base, every);
  sparse(mid, {{3, 'm'}, {4, 'm'}, {5, 'm'}, {40, 'm'}});
  sparse(top, {{4, 't'}, {40, '\0'}, {63, 't'}});

  SnapshotFiles files;
  files.mem_file_path = top;
  files.lower_layers = {base, mid};
  ASSERT_OK_AND_ASSIGN(auto snap, SnapshotMemory::Open(files));
  EXPECT_EQ(snap->layers(), 3u);
  EXPECT_EQ(snap->layer_extents(), 5u);  // mid: pages 3-5 and 40; top: 4, 40 and 63
  auto at = [&](uint64_t p) { return static_cast<char>(snap->data()[p * kPage + 17]); };
  for (uint64_t p = 0; p < pages; ++p) {
    char want = 'b';
    if (p == 3 || p == 5) want = 'm';
    if (p == 4 || p == 63) want = 't';
    if (p == 40) want = '\0';
    EXPECT_EQ(at(p), want) << "page " << p;
  }
  EXPECT_TRUE(snap->IsZero(40));
  EXPECT_FALSE(snap->IsZero(3));
  EXPECT_EQ(snap->zero_pages(), 1u);

  // Layers of another size are refused.
  sparse(mid, {{1, 'm'}});
  ASSERT_EQ(truncate(mid.c_str(), (pages + 1) * kPage), 0);
  EXPECT_THAT(SnapshotMemory::Open(files), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mid")));
}

}  // namespace
}  // namespace fcvm::uffd
