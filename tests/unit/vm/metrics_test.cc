// lib/vm's metrics and per-VM usage with the fakes (tests/unit/vm/fake_env.h):
// the exported numbers must equal what the manager did (clones started,
// failed by code, latency counts; snapshots; deletes; exits; page-server
// drops and counters; network timing), the fault-latency folding must be
// exact, and usage must come from the right process and listener.

#include <sys/types.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/metrics/registry.h"
#include "lib/vm/manager.h"
#include "lib/vm/vm_metrics.h"
#include "lib/vm/vm_usage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/unit/vm/fake_env.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;
using testing::FakeWorld;
using ::testing::HasSubstr;
using ::testing::Not;

// The value of the sample `series` ("name{a=\"b\"}" exactly as rendered) in
// an exposition; nullopt when absent.
std::optional<double> Value(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double v = 0;
    if (absl::SimpleAtod(line, &v)) return v;
  }
  return std::nullopt;
}

class VmMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = std::make_shared<FakeWorld>();
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("vmlinux"),
                              "\x7f"
                              "ELF fake kernel"));
    ASSERT_OK(WriteFileAtomic(tmp_.Sub("data.img"), std::string(1 << 20, 'd')));
  }

  void Start(uint32_t warm_pool = 0) {
    ManagerOptions o;
    o.state_dir = tmp_.Sub("state");
    o.warm_pool_size = warm_pool;
    o.clone_timeout = absl::Seconds(10);
    o.metrics_registry = &registry_;
    ASSERT_OK_AND_ASSIGN(manager_, Manager::Create(o, testing::MakeFakeEnv(world_)));
  }

  void TearDown() override { manager_.reset(); }

  RunRequest Guest(const std::string& name, bool network = false) {
    RunRequest r;
    r.name = name;
    r.config.kernel_path = tmp_.Sub("vmlinux");
    r.config.memory_mib = 16;
    r.config.drives = {{"data", tmp_.Sub("data.img"), false, false}};
    r.config.network.enabled = network;
    return r;
  }

  void MakeSnapshot(const std::string& snap = "golden", bool network = false) {
    ASSERT_OK(manager_->Run(Guest("base-" + snap, network)).status());
    ASSERT_OK(manager_->CreateSnapshot({.vm_ref = "base-" + snap, .name = snap}).status());
  }

  std::optional<double> Scrape(const std::string& series) { return Value(registry_.Render(), series); }

  ::fcvm::testing::TempDir tmp_{"fcvm-vm-metrics"};
  metrics::Registry registry_;  // outlives the manager
  std::shared_ptr<FakeWorld> world_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(VmMetricsTest, ClonesAreCountedByBackendAndCode) {
  Start();
  MakeSnapshot();
  // Every series of the fixed label sets exists at 0 before the first clone.
  EXPECT_EQ(Scrape("fcvm_clones_started_total{backend=\"uffd\"}"), 0);
  EXPECT_EQ(Scrape("fcvm_clones_started_total{backend=\"file\"}"), 0);
  EXPECT_EQ(Scrape("fcvm_clone_duration_seconds_count{backend=\"uffd\"}"), 0);

  ASSERT_OK_AND_ASSIGN(CloneResult ok, manager_->Clone({.snapshot_ref = "golden", .count = 3}));
  ASSERT_EQ(ok.succeeded, 3u);
  // The next request's second load fails (the 5th load in all: 1 boot is
  // not a load, 3 above).
  {
    absl::MutexLock lock(&world_->mu);
    world_->fail_load_at = world_->loads + 2;
    world_->load_error = absl::InvalidArgumentError("PUT /snapshot/load: bad");
  }
  ASSERT_OK_AND_ASSIGN(CloneResult mixed,
                       manager_->Clone({.snapshot_ref = "golden", .count = 3, .parallelism = 1}));
  ASSERT_EQ(mixed.succeeded, 2u);
  ASSERT_EQ(mixed.failed, 1u);
  ASSERT_OK_AND_ASSIGN(CloneResult file, manager_->Clone({.snapshot_ref = "golden",
                                                          .count = 2,
                                                          .backend = MemoryBackend::kFile,
                                                          .policy = ClonePolicy::kNone}));
  ASSERT_EQ(file.succeeded, 2u);

  std::string text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_clones_started_total{backend=\"uffd\"}"), 6);
  EXPECT_EQ(Value(text, "fcvm_clones_started_total{backend=\"file\"}"), 2);
  EXPECT_EQ(Value(text, "fcvm_clones_failed_total{backend=\"uffd\",code=\"INVALID_ARGUMENT\"}"), 1);
  // Every failure code is exported from the start, at 0 until it happens.
  EXPECT_EQ(Value(text, "fcvm_clones_failed_total{backend=\"file\",code=\"INVALID_ARGUMENT\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_clones_failed_total{backend=\"uffd\",code=\"UNAUTHENTICATED\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_clones_failed_total{backend=\"uffd\",code=\"OK\"}"), std::nullopt);
  EXPECT_EQ(Value(text, "fcvm_clone_duration_seconds_count{backend=\"uffd\"}"), 5);
  EXPECT_EQ(Value(text, "fcvm_clone_duration_seconds_count{backend=\"file\"}"), 2);
  // Phases of the clones that succeeded: no warm pool, so every one started
  // its process; no network and no prefetch (the fake resolves AUTO to
  // RECORD for the first clone and NONE after it).
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"uffd\",phase=\"process_ready\"}"),
            5);
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"uffd\",phase=\"load\"}"), 5);
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"uffd\",phase=\"disks\"}"), 5);
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"uffd\",phase=\"network\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"file\",phase=\"load\"}"), 2);
  // VMs by state: the base VM and 7 clones run; every state is exported.
  EXPECT_EQ(Value(text, "fcvm_vms{state=\"running\"}"), 8);
  EXPECT_EQ(Value(text, "fcvm_vms{state=\"failed\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_vms{state=\"creating\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_metrics_series_dropped_total{metric=\"fcvm_clones_failed_total\"}"), 0);
}

TEST_F(VmMetricsTest, RequestsRefusedUpFrontStartNoClone) {
  Start();
  MakeSnapshot();
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "nope", .count = 2}), StatusIs(absl::StatusCode::kNotFound));
  {
    absl::MutexLock lock(&world_->mu);
    world_->mem_available_mib = 1;
  }
  EXPECT_THAT(manager_->Clone({.snapshot_ref = "golden", .count = 2}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(Scrape("fcvm_clones_started_total{backend=\"uffd\"}"), 0);
  std::string text = registry_.Render();
  for (const char* backend : {"uffd", "file"}) {
    for (const char* code : {"NOT_FOUND", "RESOURCE_EXHAUSTED", "INTERNAL"}) {
      EXPECT_EQ(Value(text, absl::StrCat("fcvm_clones_failed_total{backend=\"", backend, "\",code=\"", code,
                                         "\"}")),
                0)
          << backend << " " << code;
    }
  }
}

TEST_F(VmMetricsTest, SnapshotsDeletesAndExits) {
  Start();
  MakeSnapshot("one");
  ASSERT_OK_AND_ASSIGN(SnapshotInfo two, manager_->CreateSnapshot({.vm_ref = "base-one", .name = "two"}));
  ASSERT_OK_AND_ASSIGN(SnapshotInfo one, manager_->GetSnapshot("one"));
  EXPECT_THAT(manager_->CreateSnapshot({.vm_ref = "nope"}), StatusIs(absl::StatusCode::kNotFound));
  std::string text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_snapshot_create_duration_seconds_count"), 2);
  EXPECT_EQ(Value(text, "fcvm_snapshot_written_bytes_total"),
            one.memory_bytes + one.vmstate_bytes + two.memory_bytes + two.vmstate_bytes);
  EXPECT_GT(*Value(text, "fcvm_snapshot_written_bytes_total"), 0);
  EXPECT_EQ(Value(text, "fcvm_snapshot_create_failures_total{code=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_snapshot_create_failures_total{code=\"INTERNAL\"}"), 0);

  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "one", .count = 3}));
  ASSERT_OK(manager_->Delete(clones.clones[0].id, /*force=*/true, absl::ZeroDuration()).status());
  // A clone whose process dies on its own, with an error: failed.
  ASSERT_TRUE(testing::ExitFakeProcess(clones.clones[1].pid, 1));
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Scrape("fcvm_vm_unexpected_exits_total{state=\"failed\"}") != 1 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
  text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_vm_unexpected_exits_total{state=\"failed\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_vm_unexpected_exits_total{state=\"stopped\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_vm_deletions_total{mode=\"forced\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_vms{state=\"failed\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_vms{state=\"running\"}"), 2);  // base-one and one clone
}

TEST_F(VmMetricsTest, NetworkSetupAndTeardownAreTimed) {
  Start();
  MakeSnapshot("net", /*network=*/true);
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "net", .count = 2}));
  ASSERT_EQ(clones.succeeded, 2u);
  ASSERT_OK(manager_->Delete(clones.clones[0].id, true, absl::ZeroDuration()).status());
  std::string text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_network_setup_duration_seconds_count"), 3);  // the base VM and 2 clones
  EXPECT_EQ(Value(text, "fcvm_network_teardown_duration_seconds_count"), 1);
  EXPECT_EQ(Value(text, "fcvm_clone_phase_duration_seconds_count{backend=\"uffd\",phase=\"network\"}"), 2);
}

// A network whose every operation fails.
class BrokenNetwork final : public NetworkService {
 public:
  absl::Status Available() const override { return absl::OkStatus(); }
  absl::StatusOr<VmNetworkInfo> Setup(const std::string&, const std::vector<PortMapping>&,
                                      uint32_t) override {
    return absl::ResourceExhaustedError("address pool exhausted");
  }
  absl::Status Teardown(const std::string&) override { return absl::InternalError("netlink: busy"); }
  absl::StatusOr<std::vector<std::string>> ReconcileOrphans(
      const absl::flat_hash_set<std::string>&) override {
    return std::vector<std::string>{};
  }
  absl::Status RemoveHostRules() override { return absl::OkStatus(); }
};

TEST(VmMetricsNetworkTest, FailuresAreCountedByOperationAndCode) {
  metrics::Registry registry;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<VmMetrics> m, VmMetrics::Create(&registry));
  std::unique_ptr<NetworkService> net = m->Wrap(std::make_unique<BrokenNetwork>());
  EXPECT_THAT(net->Setup("vm-1", {}), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(net->Setup("vm-2", {}), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(net->Teardown("vm-1"), StatusIs(absl::StatusCode::kInternal));
  std::string text = registry.Render();
  EXPECT_EQ(Value(text, "fcvm_network_failures_total{operation=\"setup\",code=\"RESOURCE_EXHAUSTED\"}"), 2);
  EXPECT_EQ(Value(text, "fcvm_network_failures_total{operation=\"teardown\",code=\"INTERNAL\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_network_failures_total{operation=\"teardown\",code=\"RESOURCE_EXHAUSTED\"}"),
            0);
  EXPECT_EQ(Value(text, "fcvm_network_setup_duration_seconds_count"), 0);
}

TEST_F(VmMetricsTest, WarmPoolAndPageServer) {
  Start(/*warm_pool=*/1);
  MakeSnapshot();
  uffd::PageStats total;
  total.faults = 7;
  total.pages_copied = 40;
  total.zero_pages = 5;
  total.prefetched_pages = 3;
  total.bytes_copied = 40 * 4096;
  total.eagain = 2;
  total.remove_events = 1;
  total.latency.Add(1000);     // <= 1.024 us
  total.latency.Add(1023);     // <= 1.024 us
  total.latency.Add(1024);     // the next bucket: 2.048 us
  total.latency.Add(30000);    // <= 32.768 us
  total.latency.Add(1 << 30);  // above the last bound
  total.latency_sum_ns = 1000 + 1023 + 1024 + 30000 + (1 << 30);
  {
    absl::MutexLock lock(&world_->mu);
    world_->pager_total = total;
  }
  // The first scrape: nothing cached the page server's stats before.
  std::string text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_warm_pool_target"), 1);
  EXPECT_EQ(Value(text, "fcvm_page_server_faults_total"), 7);
  EXPECT_EQ(Value(text, "fcvm_page_server_pages_copied_total"), 40);
  EXPECT_EQ(Value(text, "fcvm_page_server_zero_pages_total"), 5);
  EXPECT_EQ(Value(text, "fcvm_page_server_prefetched_pages_total"), 3);
  EXPECT_EQ(Value(text, "fcvm_page_server_copied_bytes_total"), 40 * 4096);
  EXPECT_EQ(Value(text, "fcvm_page_server_eagain_retries_total"), 2);
  EXPECT_EQ(Value(text, "fcvm_page_server_remove_events_total"), 1);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"5.12e-07\"}"), 0);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"1.024e-06\"}"), 2);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"2.048e-06\"}"), 3);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"1.6384e-05\"}"), 3);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"3.2768e-05\"}"), 4);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"0.134217728\"}"), 4);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_bucket{le=\"+Inf\"}"), 5);
  EXPECT_EQ(Value(text, "fcvm_page_server_fault_duration_seconds_count"), 5);
  EXPECT_DOUBLE_EQ(*Value(text, "fcvm_page_server_fault_duration_seconds_sum"),
                   static_cast<double>(total.latency_sum_ns) / 1e9);

  // Session drops come from the page server's events.
  std::function<void(const uffd::SessionEvent&)> fire;
  {
    absl::MutexLock lock(&world_->mu);
    fire = world_->pager_events;
  }
  ASSERT_TRUE(fire);
  fire({.kind = uffd::SessionEventKind::kFailed, .tag = "vm-x", .status = absl::InternalError("boom")});
  fire({.kind = uffd::SessionEventKind::kRejected, .tag = "vm-y", .status = absl::InternalError("bad")});
  fire({.kind = uffd::SessionEventKind::kRejected, .tag = "vm-z", .status = absl::InternalError("bad")});
  fire({.kind = uffd::SessionEventKind::kClosed, .tag = "vm-w"});
  text = registry_.Render();
  EXPECT_EQ(Value(text, "fcvm_page_server_sessions_dropped_total{reason=\"failed\"}"), 1);
  EXPECT_EQ(Value(text, "fcvm_page_server_sessions_dropped_total{reason=\"rejected\"}"), 2);

  // The warm pool: a clone takes its process; later takes with none ready
  // are misses.
  ASSERT_OK_AND_ASSIGN(CloneResult c, manager_->Clone({.snapshot_ref = "golden", .count = 1}));
  EXPECT_EQ(Scrape("fcvm_warm_pool_misses_total"), manager_->warm_pool_misses());
  // The pool refills in the background (read twice, the gauge could move in
  // between: it failed so under ASan): compare once it is full again.
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (manager_->warm_pool_ready() < 1 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(manager_->warm_pool_ready(), 1u);
  EXPECT_EQ(Scrape("fcvm_warm_pool_ready"), 1);
}

TEST_F(VmMetricsTest, FamiliesLeaveWithTheManager) {
  Start();
  EXPECT_THAT(registry_.Render(), HasSubstr("fcvm_vms{"));
  // A second manager cannot register the same names in the same registry.
  ManagerOptions o;
  o.state_dir = tmp_.Sub("state2");
  o.metrics_registry = &registry_;
  EXPECT_THAT(Manager::Create(o, testing::MakeFakeEnv(std::make_shared<FakeWorld>())).status(),
              StatusIs(absl::StatusCode::kAlreadyExists));
  manager_.reset();
  std::string text = registry_.Render();
  EXPECT_THAT(text, Not(HasSubstr("fcvm_vms{")));
  EXPECT_THAT(text, Not(HasSubstr("fcvm_page_server_faults_total")));
  // The event families stay (their series live as long as the registry).
  EXPECT_THAT(text, HasSubstr("fcvm_clones_started_total{"));
}

TEST(FaultLatencyTest, FoldingIsExactAtEveryEdge) {
  std::vector<double> bounds = FaultLatencyBounds();
  ASSERT_EQ(bounds.size(), 19u);
  EXPECT_DOUBLE_EQ(bounds.front(), 512e-9);
  EXPECT_DOUBLE_EQ(bounds.back(), 134217728e-9);
  // Every value lands in the first bound >= it, except exact powers of two,
  // which the page server buckets above their edge.
  for (uint64_t ns :
       {uint64_t{0}, uint64_t{3}, uint64_t{511}, uint64_t{512}, uint64_t{513}, uint64_t{1023}, uint64_t{5000},
        uint64_t{65535}, uint64_t{65536}, uint64_t{134217727}, uint64_t{134217728}, uint64_t{1} << 40}) {
    uffd::LatencyHistogram h;
    h.Add(ns);
    std::vector<uint64_t> folded = FoldFaultLatency(h);
    ASSERT_EQ(folded.size(), bounds.size() + 1);
    size_t want = 0;
    while (want < bounds.size() && !(static_cast<double>(ns) < bounds[want] * 1e9 - 0.5)) ++want;
    for (size_t j = 0; j < folded.size(); ++j) {
      EXPECT_EQ(folded[j], j == want ? 1u : 0u) << ns << " ns, bucket " << j;
    }
  }
}

// ---- usage ----

TEST_F(VmMetricsTest, UsageComesFromEachVmsProcessAndListener) {
  Start();
  MakeSnapshot();
  ASSERT_OK_AND_ASSIGN(CloneResult clones, manager_->Clone({.snapshot_ref = "golden", .count = 2}));
  const VmInfo& a = clones.clones[0];
  const VmInfo& b = clones.clones[1];
  {
    absl::MutexLock lock(&world_->mu);
    world_->process_usage[a.pid] = {absl::Milliseconds(2500), 64 << 20, 20 << 20};
    world_->faults_by_tag[a.id] = 123;
    world_->faults_by_tag[b.id] = 7;
  }
  std::map<std::string, VmUsage> u = manager_->Usage({a.id, b.id, "base-golden", "nope"}, /*pss=*/false);
  ASSERT_EQ(u.size(), 3u);  // a ref may be a name; "nope" is unknown
  EXPECT_EQ(u.count("nope"), 0u);
  EXPECT_EQ(u[a.id].cpu_time, absl::Milliseconds(2500));
  EXPECT_EQ(u[a.id].rss_bytes, 64u << 20);
  EXPECT_EQ(u[a.id].pss_bytes, std::nullopt);
  EXPECT_EQ(u[a.id].page_faults_served, 123u);
  EXPECT_EQ(u[b.id].page_faults_served, 7u);
  EXPECT_EQ(u[b.id].cpu_time, absl::Seconds(1));
  EXPECT_GE(u[a.id].uptime, absl::ZeroDuration());
  EXPECT_LT(u[a.id].uptime, absl::Minutes(1));
  {
    absl::MutexLock lock(&world_->mu);
    EXPECT_EQ(world_->usage_reads, 3);
    EXPECT_EQ(world_->pss_reads, 0);
  }
  u = manager_->Usage({a.id}, /*pss=*/true);
  EXPECT_EQ(u[a.id].pss_bytes, 20u << 20);
  // A VM without a running process has no usage.
  ASSERT_TRUE(testing::ExitFakeProcess(b.pid, 0));
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (manager_->Get(b.id)->state != VmState::kStopped && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(manager_->Usage({b.id}, false).count(b.id), 0u);
}

TEST(UsageParseTest, SmapsRollupPss) {
  ASSERT_OK_AND_ASSIGN(uint64_t pss, ParseSmapsRollupPss("55d0-7ffd ---p 00000000 00:00 0 [rollup]\n"
                                                         "Rss:               12345 kB\n"
                                                         "Pss:                4096 kB\n"
                                                         "Pss_Anon:           1000 kB\n"));
  EXPECT_EQ(pss, 4096u * 1024);
  EXPECT_THAT(ParseSmapsRollupPss("Rss: 1 kB\n"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSmapsRollupPss("Pss: x kB\n"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(UsageParseTest, ReadsThisProcess) {
  // Burn a little CPU so that the time is not 0 ticks.
  volatile uint64_t x = 0;
  for (absl::Time until = absl::Now() + absl::Milliseconds(30); absl::Now() < until;) x = x + 1;
  ASSERT_OK_AND_ASSIGN(ProcessUsage u, ReadProcProcessUsage(getpid(), /*pss=*/true));
  EXPECT_GT(u.cpu_time, absl::ZeroDuration());
  EXPECT_GT(u.rss_bytes, 1u << 20);
  ASSERT_TRUE(u.pss_bytes.has_value());
  EXPECT_GT(*u.pss_bytes, 0u);
  EXPECT_LE(*u.pss_bytes, u.rss_bytes + (1 << 20));
  EXPECT_THAT(ReadProcProcessUsage(0x7ffffff0, false), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fcvm::vm
