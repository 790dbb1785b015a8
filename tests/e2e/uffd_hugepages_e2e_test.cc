// The real Firecracker with guest memory on 2 MiB hugetlbfs pages
// ("huge_pages": "2M"), restored through lib/uffd's PageServer: on demand,
// and recorded then prefetched (prefetch-then-resume). The test guest checks
// its own memory on every tick, so a wrong page is a BAD tick.
//
// Needs what the other e2e tests need (FCVM_FIRECRACKER_BIN, /dev/kvm, the
// test guest) plus root to add huge pages to the host's pool for the suite
// (written to /proc/sys/vm/nr_hugepages and taken out again at the end); it
// skips, with the reason, otherwise.

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/hugetlb.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "lib/uffd/page_server.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::e2e::TempDir;
using ::fcvm::testing::IsOk;
using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kTickTimeout = absl::Seconds(30);
constexpr uint64_t kHuge = 2 << 20;
// Golden VM, then at most two clones at a time, 64 pages (128 MiB) each.
constexpr uint64_t kPoolPages = 3 * 64 + 16;

class HugePagesE2E : public ::testing::Test {
 protected:
  struct Golden {
    std::unique_ptr<TempDir> dir;
    std::optional<FirecrackerBinary> binary;
    std::optional<HugePageReservation> pool;
    std::string vmstate, mem;
    uint64_t last_tick = 0;
    std::string skip;   // why the suite cannot run here
    std::string error;  // why the golden snapshot failed
  };
  static Golden* golden_;

  static absl::Status MakeGolden(Golden& g) {
    ASSIGN_OR_RETURN(FirecrackerBinary binary, FirecrackerBinary::Probe(e2e::FirecrackerPath()));
    g.binary = binary;
    ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, Vmm::Launch(binary, {.vm_dir = g.dir->path() + "/golden",
                                                                    .id = "golden",
                                                                    .parent_death_signal = SIGKILL}));
    BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
    spec.machine.huge_pages = "2M";
    RETURN_IF_ERROR(vmm->Boot(spec));
    ASSIGN_OR_RETURN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
    RETURN_IF_ERROR(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, kTickTimeout).status());
    RETURN_IF_ERROR(vmm->api().Pause());
    g.vmstate = g.dir->path() + "/golden.vmstate";
    g.mem = g.dir->path() + "/golden.mem";
    RETURN_IF_ERROR(vmm->CreateSnapshot({.snapshot_path = g.vmstate, .mem_file_path = g.mem}));
    g.last_tick = e2e::LastTick(vmm->console());
    return vmm->Kill().status();
  }

  static void SetUpTestSuite() {
    golden_ = new Golden();
    if (std::string missing = e2e::MissingPrerequisite(); !missing.empty()) {
      golden_->skip = missing;
      return;
    }
    absl::StatusOr<HugePagePool> pool = ReadHugePagePool();
    if (!pool.ok() || pool->page_size != kHuge) {
      golden_->skip =
          pool.ok() ? "the default huge page size is not 2 MiB" : std::string(pool.status().message());
      return;
    }
    absl::StatusOr<HugePageReservation> r = HugePageReservation::Add(kPoolPages);
    if (!r.ok()) {
      golden_->skip = absl::StrCat("cannot reserve huge pages: ", r.status().message());
      return;
    }
    golden_->pool = std::move(*r);
    golden_->dir = std::make_unique<TempDir>();
    absl::Status st = MakeGolden(*golden_);
    if (!st.ok()) golden_->error = std::string(st.message());
  }

  static void TearDownTestSuite() {
    delete golden_;  // the directory, then the huge pages
    golden_ = nullptr;
  }

  void SetUp() override {
    if (!golden_->skip.empty()) GTEST_SKIP() << golden_->skip;
    ASSERT_EQ(golden_->error, "") << "golden snapshot failed";
    dir_ = std::make_unique<TempDir>();
    ASSERT_OK_AND_ASSIGN(server_, uffd::PageServer::Create({.threads = 2}));
    server_->SetEventCallback(events_.Callback());
  }

  void TearDown() override {
    vmms_.clear();
    if (server_) server_->Stop();
    if (dir_ == nullptr) return;
    EXPECT_THAT(e2e::Leftovers(dir_->path()), IsEmpty());
  }

  absl::StatusOr<Vmm*> Launch(const std::string& name) {
    ASSIGN_OR_RETURN(
        std::unique_ptr<Vmm> vmm,
        Vmm::Launch(*golden_->binary,
                    {.vm_dir = dir_->path() + "/" + name, .id = name, .parent_death_signal = SIGKILL}));
    vmms_.push_back(std::move(vmm));
    return vmms_.back().get();
  }

  uffd::ListenerSpec Spec(const std::string& name, uffd::ClonePolicy policy) {
    uffd::ListenerSpec spec;
    spec.socket_path = dir_->path() + "/" + name + ".uffd.sock";
    spec.files.mem_file_path = golden_->mem;
    spec.files.zero_map_path = dir_->path() + "/zeromap";
    spec.files.working_set_path = dir_->path() + "/wset";
    spec.policy = policy;
    spec.tag = name;
    return spec;
  }

  SnapshotLoad UffdLoad(const uffd::ListenerSpec& spec, bool resume) {
    return {.snapshot_path = golden_->vmstate,
            .backend = MemBackend::kUffd,
            .backend_path = spec.socket_path,
            .resume_vm = resume};
  }

  uffd::ListenerStats StatsOf(uffd::ListenerId id) {
    for (auto& l : server_->GetStats().listeners) {
      if (l.id == id) return l;
    }
    ADD_FAILURE() << "no stats for listener " << id;
    return {};
  }

  void ExpectTicksContinue(Vmm& vmm) {
    absl::StatusOr<e2e::Tick> t = e2e::WaitForOkTicks(vmm.console(), 0, 2, golden_->last_tick, kTickTimeout);
    EXPECT_THAT(t.status(), IsOk()) << vmm.options().id << vmm.RecentOutput();
    EXPECT_OK(vmm.CheckRunning());
  }

  // Records session events for the assertions.
  class Events {
   public:
    std::function<void(const uffd::SessionEvent&)> Callback() {
      return [this](const uffd::SessionEvent& e) {
        absl::MutexLock lock(&mu_);
        events_.push_back(e);
      };
    }
    std::optional<uffd::SessionEvent> Find(uffd::ListenerId id, uffd::SessionEventKind kind,
                                           absl::Duration timeout = absl::Seconds(20)) {
      const absl::Time deadline = absl::Now() + timeout;
      absl::MutexLock lock(&mu_);
      for (size_t seen = 0;;) {
        for (; seen < events_.size(); ++seen) {
          if (events_[seen].listener == id && events_[seen].kind == kind) return events_[seen];
        }
        struct Arg {
          std::vector<uffd::SessionEvent>* events;
          size_t seen;
        } arg{&events_, seen};
        if (!mu_.AwaitWithDeadline(absl::Condition(
                                       +[](Arg* a) { return a->events->size() > a->seen; }, &arg),
                                   deadline)) {
          return std::nullopt;
        }
      }
    }

   private:
    absl::Mutex mu_;
    std::vector<uffd::SessionEvent> events_ ABSL_GUARDED_BY(mu_);
  };

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<uffd::PageServer> server_;
  std::vector<std::unique_ptr<Vmm>> vmms_;
  Events events_;
};

HugePagesE2E::Golden* HugePagesE2E::golden_ = nullptr;

TEST_F(HugePagesE2E, OnDemandRestoreServesWhole2MiBPages) {
  uffd::ListenerSpec spec = Spec("ondemand", uffd::ClonePolicy::kNone);
  ASSERT_OK_AND_ASSIGN(uffd::ListenerId id, server_->AddListener(spec));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("ondemand"));
  ASSERT_OK(vmm->LoadSnapshot(UffdLoad(spec, /*resume=*/true)));
  ExpectTicksContinue(*vmm);
  std::optional<uffd::SessionEvent> ready = events_.Find(id, uffd::SessionEventKind::kReady);
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ(ready->page_size, kHuge) << "Firecracker announced 2 MiB pages";
  uffd::ListenerStats s = StatsOf(id);
  ASSERT_EQ(s.sessions.size(), 1u);
  EXPECT_EQ(s.sessions[0].page_size, kHuge);
  // The ticks touch 10 MiB of test areas (5 huge pages) plus the guest's
  // own code, stack and tables, and Firecracker's writes at load: a handful
  // of faults, each a whole 2 MiB page (stats count 4 KiB pages).
  EXPECT_GE(s.stats.faults, 5u);
  EXPECT_LE(s.stats.faults, 64u);
  EXPECT_EQ((s.stats.pages_copied + s.stats.zero_pages) % (kHuge / 4096), 0u);
  EXPECT_EQ(s.stats.eagain, 0u);
  std::printf("on-demand 2 MiB restore: %s\n", s.stats.ToString().c_str());
}

TEST_F(HugePagesE2E, RecordThenPrefetchThenResume) {
  // A recording clone runs two ticks: its working set is written when it ends.
  uffd::ListenerSpec rec = Spec("rec", uffd::ClonePolicy::kRecord);
  ASSERT_OK_AND_ASSIGN(uffd::ListenerId rid, server_->AddListener(rec));
  ASSERT_OK_AND_ASSIGN(Vmm * recorder, Launch("rec"));
  ASSERT_OK(recorder->LoadSnapshot(UffdLoad(rec, /*resume=*/true)));
  ExpectTicksContinue(*recorder);
  const uint64_t recorded_faults = StatsOf(rid).stats.faults;
  ASSERT_OK(recorder->Kill().status());
  ASSERT_TRUE(events_.Find(rid, uffd::SessionEventKind::kClosed).has_value());
  ASSERT_OK(server_->RemoveListener(rid));  // flushes the working-set file before the next listener looks

  uffd::ListenerSpec pre = Spec("pre", uffd::ClonePolicy::kPrefetch);
  pre.paused_during_prefetch = true;
  ASSERT_OK_AND_ASSIGN(uffd::ListenerId pid, server_->AddListener(pre));
  ASSERT_OK_AND_ASSIGN(Vmm * clone, Launch("pre"));
  ASSERT_OK(clone->LoadSnapshot(UffdLoad(pre, /*resume=*/false)));
  ASSERT_OK(server_->WaitPrefetchDone(pid, absl::Now() + absl::Seconds(30)));
  uffd::ListenerStats before = StatsOf(pid);
  // Every huge page the recorder faulted on, whole: the working set holds
  // them as 4 KiB units standing for 512 each.
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<uffd::SnapshotMemory> snap, server_->OpenSnapshot(pre.files));
  ASSERT_NE(snap->working_set(), nullptr);
  EXPECT_EQ(snap->working_set_block_pages(), kHuge / 4096);
  EXPECT_EQ(before.stats.prefetched_pages, snap->working_set()->size() * (kHuge / 4096));
  EXPECT_GE(snap->working_set()->size(), 5u);
  ASSERT_OK(clone->api().Resume());
  ExpectTicksContinue(*clone);
  uffd::ListenerStats after = StatsOf(pid);
  std::printf("prefetch 2 MiB restore: recorder %lu faults; clone %s\n",
              static_cast<unsigned long>(recorded_faults), after.stats.ToString().c_str());
  // Only faults taken during the load itself (before the session read the
  // plan) or on pages the recorder never touched remain.
  EXPECT_LT(after.stats.faults, recorded_faults);
}

TEST_F(HugePagesE2E, FileBackendRestoreIsRefusedByFirecracker) {
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("file"));
  absl::Status st = vmm->LoadSnapshot({.snapshot_path = golden_->vmstate,
                                       .backend = MemBackend::kFile,
                                       .backend_path = golden_->mem,
                                       .resume_vm = true});
  std::printf("File-backend restore of a hugetlbfs snapshot: %s\n", st.ToString().c_str());
  // Firecracker 1.14.2: HTTP 400 "Load snapshot error: Failed to restore from
  // snapshot: Failed to load guest memory: Error creating guest memory from
  // file: Cannot restore hugetlbfs backed snapshot by mapping the memory file.
  // Please use uffd.", then it exits (exit code 1), as after any failed load.
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           HasSubstr("Cannot restore hugetlbfs backed snapshot by mapping the memory file")));
  EXPECT_THAT(vmm->CheckRunning(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("exit code 1")));
}

TEST_F(HugePagesE2E, EmptyPoolKillsTheCloneInsteadOfFreezingIt) {
  // Firecracker maps hugetlbfs guest memory MAP_NORESERVE: the pool is only
  // drawn on when the page server installs a page. Hold all but two free
  // pages (a reserving mapping, never touched) and restore.
  ASSERT_OK_AND_ASSIGN(HugePagePool pool, ReadHugePagePool());
  const uint64_t avail = pool.free - pool.reserved;
  ASSERT_GT(avail, 2u);
  const uint64_t hog_len = (avail - 2) * kHuge;
  void* hog =
      mmap(nullptr, hog_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  ASSERT_NE(hog, MAP_FAILED) << strerror(errno);
  uffd::ListenerSpec spec = Spec("dry", uffd::ClonePolicy::kNone);
  ASSERT_OK_AND_ASSIGN(uffd::ListenerId id, server_->AddListener(spec));
  ASSERT_OK_AND_ASSIGN(Vmm * vmm, Launch("dry"));
  absl::Status st = vmm->LoadSnapshot(UffdLoad(spec, /*resume=*/true));
  if (st.ok()) {
    // The load may finish on the two pages; the guest's first tick needs more.
    absl::StatusOr<e2e::Tick> t = e2e::WaitForOkTicks(vmm->console(), 0, 1, golden_->last_tick, kTickTimeout);
    EXPECT_FALSE(t.ok()) << "the guest ticked without its pages";
  }
  std::optional<uffd::SessionEvent> failed = events_.Find(id, uffd::SessionEventKind::kFailed);
  munmap(hog, hog_len);
  ASSERT_TRUE(failed.has_value());
  EXPECT_TRUE(failed->peer_killed);
  EXPECT_EQ(failed->status.code(), absl::StatusCode::kResourceExhausted) << failed->status;
  std::printf("empty pool: load %s; session %s\n", st.ToString().c_str(), failed->status.ToString().c_str());
  // The SIGKILL is sent; the process may take a moment to be gone (jailed:
  // the jailer's PID namespace tears down first).
  absl::Status running = vmm->CheckRunning();
  for (absl::Time until = absl::Now() + absl::Seconds(10); running.ok() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(10));
    running = vmm->CheckRunning();
  }
  EXPECT_THAT(running, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("killed by signal 9")));
}

}  // namespace
}  // namespace fcvm::firecracker
