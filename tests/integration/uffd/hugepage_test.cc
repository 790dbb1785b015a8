// The page server serving guests whose memory is hugetlbfs (Firecracker's
// "huge_pages": "2M"), against the real kernel: the stand-in VMM maps
// MAP_HUGETLB | MAP_NORESERVE memory, as Firecracker does, and checks every
// byte after faults, prefetch, zero pages and REMOVE (madvise DONTNEED).
//
// The suite adds huge pages to the host's pool for its lifetime (writes
// /proc/sys/vm/nr_hugepages, takes them out again at the end) and skips, with
// the reason, where that is not possible.

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/hugetlb.h"
#include "lib/base/status.h"
#include "lib/uffd/page_server.h"
#include "tests/integration/uffd/uffd_test_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::uffd {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using namespace ::fcvm::uffd::testing;

constexpr uint64_t kHuge = 2 << 20;
constexpr uint64_t kUnit = 4096;
constexpr uint64_t kGroup = kHuge / kUnit;  // base pages per huge page
constexpr uint64_t kMem = 32 << 20;         // 16 huge pages
constexpr uint64_t kHugePages = kMem / kHuge;
constexpr uint32_t kSeed = 11;
const std::string kPageSizeArg = "--page-size=" + std::to_string(kHuge);

bool ZeroHugePage(uint64_t huge_page) {
  return CountZeroPages(kGroup, kSeed, huge_page * kGroup, kGroup) == kGroup;
}

uint64_t ZeroHugePages() {
  uint64_t n = 0;
  for (uint64_t h = 0; h < kHugePages; ++h) n += ZeroHugePage(h) ? 1 : 0;
  return n;
}

void Touch(const std::string& path) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  if (fd >= 0) close(fd);
}

class HugePageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_ = new std::string();
    auto pool = ReadHugePagePool();
    if (!pool.ok()) {
      *skip_ = absl::StrCat("no hugetlb: ", pool.status().message());
      return;
    }
    if (pool->page_size != kHuge) {
      *skip_ = absl::StrCat("default huge page size is ", pool->page_size, ", not 2 MiB");
      return;
    }
    // Three 16-page clones at once, with room to spare.
    auto r = HugePageReservation::Add(56);
    if (!r.ok()) {
      *skip_ = absl::StrCat("cannot reserve huge pages: ", r.status().message());
      return;
    }
    reservation_ = new HugePageReservation(std::move(*r));
  }
  static void TearDownTestSuite() {
    delete reservation_;
    reservation_ = nullptr;
    delete skip_;
    skip_ = nullptr;
  }

  void SetUp() override {
    if (!skip_->empty()) GTEST_SKIP() << *skip_;
    ASSERT_FALSE(dir_.path().empty());
    mem_ = dir_.File("mem");
    WriteMemFile(mem_, kMem, kSeed, kGroup);
    ASSERT_GT(ZeroHugePages(), 0u) << "the layout must have whole zero huge pages";
    ASSERT_LT(ZeroHugePages(), kHugePages);
    auto server = PageServer::Create({.threads = 2});
    ASSERT_OK(server);
    server_ = std::move(*server);
    server_->SetEventCallback(events_.Callback());
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  ListenerSpec Spec(const std::string& name) {
    ListenerSpec s;
    s.socket_path = dir_.File(name + ".sock");
    s.files.mem_file_path = mem_;
    s.tag = name;
    return s;  // default fault-around (32 KiB): moot with 2 MiB pages
  }

  ListenerStats StatsOf(ListenerId id) {
    for (auto& l : server_->GetStats().listeners) {
      if (l.id == id) return l;
    }
    ADD_FAILURE() << "no stats for listener " << id;
    return {};
  }

  void WaitSessionsGone(ListenerId id) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      ListenerStats s = StatsOf(id);
      if (s.sessions_total >= 1 && s.sessions_active == 0) return;
      usleep(2000);
    }
    ADD_FAILURE() << "sessions of listener " << id << " still active";
  }

  // Huge pages that hold data (not all zero), for tests that must see data.
  std::vector<uint64_t> DataHugePages(size_t n) {
    std::vector<uint64_t> out;
    for (uint64_t h = 0; h < kHugePages && out.size() < n; ++h) {
      if (!ZeroHugePage(h)) out.push_back(h);
    }
    return out;
  }

  static std::string* skip_;
  static HugePageReservation* reservation_;
  TempDir dir_;
  std::string mem_;
  EventLog events_;
  std::unique_ptr<PageServer> server_;
};

std::string* HugePageTest::skip_ = nullptr;
HugePageReservation* HugePageTest::reservation_ = nullptr;

TEST_F(HugePageTest, EveryFaultCopiesOneWholeHugePageAndZeroPagesAreExact) {
  ListenerSpec spec = Spec("od");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {kPageSizeArg, "--threads=4", "--regions=2"});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();
  auto ready = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == id && e.kind == SessionEventKind::kReady; });
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ(ready->page_size, kHuge);
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  const uint64_t zero = ZeroHugePages();
  // One fault per huge page, whatever 4 KiB of it was touched first; counts
  // in 4 KiB pages (stats.h).
  EXPECT_EQ(s.stats.faults, kHugePages);
  EXPECT_EQ(s.stats.zero_pages, zero * kGroup);
  EXPECT_EQ(s.stats.pages_copied, (kHugePages - zero) * kGroup);
  EXPECT_EQ(s.stats.bytes_copied, (kHugePages - zero) * kHuge);
  EXPECT_EQ(s.stats.eagain, 0u);
}

TEST_F(HugePageTest, WithoutZeroElisionEveryHugePageIsCopiedFromTheFile) {
  ListenerSpec spec = Spec("nz");
  spec.zero_elision = false;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {kPageSizeArg, "--threads=2"});
  EXPECT_TRUE(WaitChild(p).success());
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  EXPECT_EQ(s.stats.zero_pages, 0u);
  EXPECT_EQ(s.stats.pages_copied, kHugePages * kGroup);
}

TEST_F(HugePageTest, RemovedHugePagesReadZeroAndTheRestKeepsItsData) {
  // The stand-in touches everything, drops huge pages 3-6 with
  // madvise(DONTNEED), reads them back (zeros, served as zero pages because
  // REMOVE said so), and checks every other page against the file.
  const std::vector<uint64_t> data = DataHugePages(1);
  ASSERT_FALSE(data.empty());
  ListenerSpec spec = Spec("rm");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {kPageSizeArg, "--threads=2", "--remove=3:4"});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();
  WaitSessionsGone(id);
  ListenerStats s = StatsOf(id);
  EXPECT_GE(s.stats.remove_events, 1u);
  EXPECT_EQ(s.stats.faults, kHugePages + 4) << "each removed page faults once more";
  // The refaults were zero pages whatever the file holds there.
  uint64_t zero_in_range = 0;
  for (uint64_t h = 3; h < 7; ++h) zero_in_range += ZeroHugePage(h) ? 1 : 0;
  EXPECT_EQ(s.stats.zero_pages, (ZeroHugePages() + 4) * kGroup);
  EXPECT_LT(zero_in_range, 4u) << "the removed range must hold data for this test to mean something";
}

TEST_F(HugePageTest, PartOfAHugePageIsNeverRemoved) {
  // madvise(DONTNEED) of 4 KiB pieces of untouched huge pages: no kernel
  // drops part of a huge page, so a page server that took such a REMOVE
  // event as covering the whole page would serve zeros over the guest's data.
  // Linux 6.16 and later check the range before sending the event (EINVAL
  // for the unaligned piece, nothing to drop for the other: no event);
  // older ones send it first, and WholePagesIn (unit-tested) keeps the page.
  const std::vector<uint64_t> data = DataHugePages(3);
  ASSERT_EQ(data.size(), 3u);
  ListenerSpec spec = Spec("sub");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(
      spec.socket_path, mem_,
      {kPageSizeArg, "--threads=2", absl::StrCat("--remove-sub=", data[0], ",", data[1], ",", data[2])});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString() << ": a partly removed huge page read back wrong";
  WaitSessionsGone(id);
  EXPECT_EQ(StatsOf(id).stats.pages_copied, (kHugePages - ZeroHugePages()) * kGroup);
}

TEST_F(HugePageTest, RemoveStormWhileFaulting) {
  ListenerSpec spec = Spec("storm");
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {kPageSizeArg, "--threads=3", "--remove-storm=300"});
  ExitStatus ex = WaitChild(p);
  EXPECT_TRUE(ex.success()) << ex.ToString();
  WaitSessionsGone(id);
  EXPECT_GE(StatsOf(id).stats.remove_events, 300u);
}

TEST_F(HugePageTest, RecordThenPrefetchSpreadOverLoopsInWholeHugePages) {
  ListenerSpec rec = Spec("rec");
  rec.policy = ClonePolicy::kRecord;
  ASSERT_OK_AND_ASSIGN(ListenerId rid, server_->AddListener(rec));
  Process p0 =
      SpawnFake(rec.socket_path, mem_, {kPageSizeArg, "--threads=2", "--touch-pages=6", "--regions=2"});
  EXPECT_TRUE(WaitChild(p0).success());
  WaitSessionsGone(rid);
  ASSERT_OK(server_->RemoveListener(rid));

  // On disk in 4 KiB units, each recorded fault standing for its huge page
  // (written by the server's writer thread: it may land just after).
  ASSERT_TRUE(WaitForFile(mem_ + ".wset", absl::Seconds(20)));
  ASSERT_OK_AND_ASSIGN(std::string wset, ReadFile(mem_ + ".wset"));
  ASSERT_OK_AND_ASSIGN(auto snap, SnapshotMemory::Open({mem_}));
  uint64_t block = 0;
  ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> pages, DecodeWorkingSet(wset, snap->identity(), &block));
  EXPECT_EQ(block, kGroup);
  EXPECT_EQ(pages.size(), 6u);
  for (uint64_t p : pages) EXPECT_EQ(p % kGroup, 0u) << p;

  std::string start = dir_.File("start");
  std::vector<ListenerId> ids;
  std::vector<Process> procs;
  for (int i = 0; i < 2; ++i) {
    ListenerSpec pre = Spec(absl::StrCat("pre", i));
    pre.policy = ClonePolicy::kPrefetch;
    pre.paused_during_prefetch = true;
    ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(pre));
    ids.push_back(id);
    procs.push_back(
        SpawnFake(pre.socket_path, mem_,
                  {kPageSizeArg, "--threads=2", "--touch-pages=6", "--regions=2", "--start-file=" + start}));
  }
  for (ListenerId id : ids) {
    ASSERT_OK(server_->WaitPrefetchDone(id, absl::Now() + absl::Seconds(30)));
    ListenerStats s = StatsOf(id);
    EXPECT_EQ(s.stats.prefetched_pages, 6 * kGroup) << "exactly the six recorded huge pages";
    EXPECT_EQ(s.stats.faults, 0u);
  }
  Touch(start);
  for (Process& p : procs) EXPECT_TRUE(WaitChild(p).success()) << "wrong bytes after prefetch";
  for (ListenerId id : ids) {
    WaitSessionsGone(id);
    EXPECT_EQ(StatsOf(id).stats.faults, 0u) << "every touched page was prefetched";
  }
}

TEST_F(HugePageTest, AWorkingSetRecordedIn4KiBPagesPrefetchesWholeHugePages) {
  // Not a case Firecracker makes (a snapshot is restored with the page size
  // it was made with), but the unit is in the file, so nothing gets mixed
  // up: 100 recorded 4 KiB pages, all inside huge page 0, become that page.
  ListenerSpec rec = Spec("rec4k");
  rec.policy = ClonePolicy::kRecord;
  rec.fault_around_bytes = 0;
  ASSERT_OK_AND_ASSIGN(ListenerId rid, server_->AddListener(rec));
  Process p0 = SpawnFake(rec.socket_path, mem_, {"--threads=1", "--touch-pages=100"});
  EXPECT_TRUE(WaitChild(p0).success());
  WaitSessionsGone(rid);
  ASSERT_OK(server_->RemoveListener(rid));

  ListenerSpec pre = Spec("pre2m");
  pre.policy = ClonePolicy::kPrefetch;
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(pre));
  std::string start = dir_.File("go");
  Process p = SpawnFake(pre.socket_path, mem_, {kPageSizeArg, "--touch-pages=1", "--start-file=" + start});
  ASSERT_OK(server_->WaitPrefetchDone(id, absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(StatsOf(id).stats.prefetched_pages, kGroup);
  Touch(start);
  EXPECT_TRUE(WaitChild(p).success());
  WaitSessionsGone(id);
  EXPECT_EQ(StatsOf(id).stats.faults, 0u);
}

TEST_F(HugePageTest, EmptyPoolFailsTheCloneAndKillsIt) {
  // Firecracker maps hugetlbfs guest memory MAP_NORESERVE: pages are taken
  // from the pool when the page server installs them. Hold all but two free
  // pages (a reserving mapping, never touched) so that the third copy finds
  // the pool empty.
  if (std::string o = ReadFile("/proc/sys/vm/nr_overcommit_hugepages").value_or("0");
      o != "0\n" && o != "0") {
    GTEST_SKIP() << "nr_overcommit_hugepages is " << o << ": the pool does not run dry";
  }
  ASSERT_OK_AND_ASSIGN(HugePagePool pool, ReadHugePagePool());
  const uint64_t avail = pool.free - pool.reserved;
  ASSERT_GT(avail, 2u);
  const uint64_t hog_len = (avail - 2) * kHuge;
  void* hog =
      mmap(nullptr, hog_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  ASSERT_NE(hog, MAP_FAILED) << strerror(errno);

  ListenerSpec spec = Spec("dry");
  spec.zero_elision = false;  // every page a copy; the pool is what fails
  ASSERT_OK_AND_ASSIGN(ListenerId id, server_->AddListener(spec));
  Process p = SpawnFake(spec.socket_path, mem_, {kPageSizeArg, "--threads=1"});
  ExitStatus ex = WaitChild(p);
  munmap(hog, hog_len);
  EXPECT_TRUE(ex.signaled && ex.value == SIGKILL) << ex.ToString();
  auto failed = events_.WaitFor(
      [&](const SessionEvent& e) { return e.listener == id && e.kind == SessionEventKind::kFailed; });
  ASSERT_TRUE(failed.has_value());
  EXPECT_TRUE(failed->peer_killed);
  EXPECT_EQ(failed->status.code(), absl::StatusCode::kResourceExhausted) << failed->status;
  EXPECT_THAT(std::string(failed->status.message()), HasSubstr("UFFDIO_COPY"));
  EXPECT_THAT(std::string(failed->status.message()), HasSubstr("hugetlb pool of 2048 KiB pages"));
  EXPECT_EQ(failed->stats.pages_copied, 2 * kGroup);
}

TEST(HugePageReservationTest, PagesAreGivenBack) {
  auto pool = ReadHugePagePool();
  if (!pool.ok()) GTEST_SKIP() << pool.status();
  ASSERT_OK_AND_ASSIGN(std::string before, ReadFile("/proc/sys/vm/nr_hugepages"));
  {
    auto r = HugePageReservation::Add(3);
    if (!r.ok()) GTEST_SKIP() << "cannot reserve: " << r.status();
    EXPECT_EQ(r->pages(), 3u);
    ASSERT_OK_AND_ASSIGN(HugePagePool during, ReadHugePagePool());
    EXPECT_GE(during.free, 3u);
    HugePageReservation moved = std::move(*r);
    EXPECT_EQ(r->pages(), 0u);
    EXPECT_EQ(moved.pages(), 3u);
  }
  EXPECT_EQ(ReadFile("/proc/sys/vm/nr_hugepages").value_or(""), before);
}

}  // namespace
}  // namespace fcvm::uffd
