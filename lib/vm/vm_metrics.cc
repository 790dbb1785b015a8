#include "lib/vm/vm_metrics.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"

namespace fcvm::vm {
namespace {

using metrics::MetricType;
using metrics::Sample;

constexpr MemoryBackend kBackends[] = {MemoryBackend::kUffd, MemoryBackend::kFile};
int Index(MemoryBackend b) { return b == MemoryBackend::kFile ? 1 : 0; }

// Request -> running of one clone, 5 ms .. 30 s.
const std::vector<double> kCloneBounds = {0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                                          0.15,  0.25, 0.5,   1,    2.5,  5,    10,    30};
// One phase of a clone, or a network setup/teardown: 0.5 ms .. 10 s.
const std::vector<double> kPhaseBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};
// A snapshot: pause, memory and vmstate files, drive copies: 50 ms .. 10 min.
const std::vector<double> kSnapshotBounds = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};

constexpr int kFaultLowShift = 9;    // 512 ns
constexpr int kFaultHighShift = 27;  // 134 ms

// Page-server stats are this old at most when a scrape reads them.
constexpr absl::Duration kStatsMaxAge = absl::Milliseconds(250);

std::string CodeName(const absl::Status& status) { return absl::StatusCodeToString(status.code()); }

// Every status code but OK: the failure families export all of them at 0
// from the start (16 values), so that rate() and increase() see a failure
// with a code never seen before (a series born at 1 has no increase).
const std::vector<std::string>& FailureCodes() {
  static const std::vector<std::string>* codes = [] {
    auto* out = new std::vector<std::string>;
    for (int c = 1; c <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++c) {
      out->push_back(absl::StatusCodeToString(static_cast<absl::StatusCode>(c)));
    }
    return out;
  }();
  return *codes;
}

}  // namespace

std::vector<double> FaultLatencyBounds() {
  std::vector<double> out;
  for (int k = kFaultLowShift; k <= kFaultHighShift; ++k) out.push_back(static_cast<double>(1ull << k) / 1e9);
  return out;
}

std::vector<uint64_t> FoldFaultLatency(const uffd::LatencyHistogram& latency) {
  const int n = kFaultHighShift - kFaultLowShift + 1;
  std::vector<uint64_t> out(n + 1, 0);
  for (int i = 0; i < uffd::LatencyHistogram::kBuckets; ++i) {
    uint64_t count = latency.buckets()[i];
    if (count == 0) continue;
    // Every value in bucket i is <= its upper edge, and the page server's
    // bucket edges include every power of two: the first bound above the
    // upper edge holds the whole bucket.
    uint64_t upper = uffd::LatencyHistogram::BucketUpper(i);
    int j = 0;
    while (j < n && upper >= (1ull << (kFaultLowShift + j))) ++j;
    out[j] += count;
  }
  return out;
}

// ---- the network, timed ----

class VmMetrics::MeteredNetwork final : public NetworkService {
 public:
  MeteredNetwork(std::unique_ptr<NetworkService> inner, VmMetrics* m) : inner_(std::move(inner)), m_(m) {}
  absl::Status Available() const override { return inner_->Available(); }
  absl::StatusOr<VmNetworkInfo> Setup(const std::string& vm_id, const std::vector<PortMapping>& publish,
                                      uint32_t tap_owner) override {
    absl::Time t = absl::Now();
    absl::StatusOr<VmNetworkInfo> out = inner_->Setup(vm_id, publish, tap_owner);
    if (out.ok()) {
      m_->network_setup_->Observe(absl::ToDoubleSeconds(absl::Now() - t));
    } else {
      m_->network_failures_->WithLabels({"setup", CodeName(out.status())}).Increment();
    }
    return out;
  }
  absl::Status Teardown(const std::string& vm_id) override {
    absl::Time t = absl::Now();
    absl::Status st = inner_->Teardown(vm_id);
    if (st.ok()) {
      m_->network_teardown_->Observe(absl::ToDoubleSeconds(absl::Now() - t));
    } else {
      m_->network_failures_->WithLabels({"teardown", CodeName(st)}).Increment();
    }
    return st;
  }
  absl::StatusOr<std::vector<std::string>> ReconcileOrphans(
      const absl::flat_hash_set<std::string>& live) override {
    return inner_->ReconcileOrphans(live);
  }
  absl::Status RemoveHostRules() override { return inner_->RemoveHostRules(); }

 private:
  std::unique_ptr<NetworkService> inner_;
  VmMetrics* const m_;
};

std::unique_ptr<NetworkService> VmMetrics::Wrap(std::unique_ptr<NetworkService> network) {
  return std::make_unique<MeteredNetwork>(std::move(network), this);
}

// ---- registration ----

VmMetrics::VmMetrics(metrics::Registry* registry) : registry_(registry) {
  if (registry_ == nullptr) {
    own_registry_ = std::make_unique<metrics::Registry>();
    registry_ = own_registry_.get();
  }
}

VmMetrics::~VmMetrics() { RemoveCallbacks(); }

absl::StatusOr<std::unique_ptr<VmMetrics>> VmMetrics::Create(metrics::Registry* registry) {
  std::unique_ptr<VmMetrics> m(new VmMetrics(registry));
  RETURN_IF_ERROR(m->Register());
  return m;
}

absl::Status VmMetrics::Register() {
  metrics::Registry& r = *registry_;
  ASSIGN_OR_RETURN(metrics::CounterFamily * started,
                   r.AddCounterFamily({.name = "fcvm_clones_started_total",
                                       .help = "Clones whose restore began, by memory backend.",
                                       .labels = {"backend"}}));
  ASSIGN_OR_RETURN(
      clones_failed_,
      r.AddCounterFamily({.name = "fcvm_clones_failed_total",
                          .help = "Clones whose restore failed, by memory backend and status code.",
                          .labels = {"backend", "code"}}));
  ASSIGN_OR_RETURN(metrics::HistogramFamily * duration,
                   r.AddHistogramFamily({.name = "fcvm_clone_duration_seconds",
                                         .help = "Time from a clone's creation to it running, clones that "
                                                 "succeeded, by memory backend.",
                                         .labels = {"backend"}},
                                        kCloneBounds));
  ASSIGN_OR_RETURN(clone_phase_, r.AddHistogramFamily(
                                     {.name = "fcvm_clone_phase_duration_seconds",
                                      .help = "Time of each step of a clone that succeeded (process_ready, "
                                              "disks, load, prefetch, network), by memory backend.",
                                      .labels = {"backend", "phase"}},
                                     kPhaseBounds));
  for (MemoryBackend b : kBackends) {
    const char* name = MemoryBackendName(b);
    clones_started_[Index(b)] = &started->WithLabels({name});
    for (const std::string& code : FailureCodes()) clones_failed_->WithLabels({name, code});
    clone_duration_[Index(b)] = &duration->WithLabels({name});
    for (const char* phase : {"process_ready", "disks", "load", "prefetch", "network"}) {
      clone_phase_->WithLabels({name, phase});
    }
  }
  ASSIGN_OR_RETURN(
      snapshot_duration_,
      r.AddHistogram({.name = "fcvm_snapshot_create_duration_seconds",
                      .help = "Time to create a snapshot (pause, memory and vmstate files, drive "
                              "copies), snapshots that succeeded."},
                     kSnapshotBounds));
  ASSIGN_OR_RETURN(snapshot_bytes_,
                   r.AddCounter({.name = "fcvm_snapshot_written_bytes_total",
                                 .help = "Bytes of memory and vmstate files written by snapshots created."}));
  ASSIGN_OR_RETURN(snapshot_failures_,
                   r.AddCounterFamily({.name = "fcvm_snapshot_create_failures_total",
                                       .help = "Snapshot creations that failed, by status code.",
                                       .labels = {"code"}}));
  for (const std::string& code : FailureCodes()) snapshot_failures_->WithLabels({code});
  ASSIGN_OR_RETURN(
      metrics::CounterFamily * deleted,
      r.AddCounterFamily({.name = "fcvm_vm_deletions_total",
                          .help = "VMs deleted (on request, or undone by fcvmd: all_or_nothing, a "
                                  "cancelled clone request, a forced snapshot deletion), by how "
                                  "their process ended (graceful: exited on SIGTERM; forced: "
                                  "SIGKILL).",
                          .labels = {"mode"}}));
  deleted_[0] = &deleted->WithLabels({"graceful"});
  deleted_[1] = &deleted->WithLabels({"forced"});
  ASSIGN_OR_RETURN(metrics::CounterFamily * exits,
                   r.AddCounterFamily({.name = "fcvm_vm_unexpected_exits_total",
                                       .help = "VM processes that exited without being asked to, by the "
                                               "state the VM went to (stopped: exit 0; failed).",
                                       .labels = {"state"}}));
  exited_stopped_ = &exits->WithLabels({"stopped"});
  exited_failed_ = &exits->WithLabels({"failed"});
  ASSIGN_OR_RETURN(metrics::CounterFamily * dropped,
                   r.AddCounterFamily({.name = "fcvm_page_server_sessions_dropped_total",
                                       .help = "Clone sessions the page server ended abnormally, by reason "
                                               "(failed: serving failed; rejected: bad handshake).",
                                       .labels = {"reason"}}));
  dropped_failed_ = &dropped->WithLabels({"failed"});
  dropped_rejected_ = &dropped->WithLabels({"rejected"});
  ASSIGN_OR_RETURN(network_setup_,
                   r.AddHistogram({.name = "fcvm_network_setup_duration_seconds",
                                   .help = "Time to set up a VM's network (namespace, tap, veth, NAT rules), "
                                           "setups that succeeded."},
                                  kPhaseBounds));
  ASSIGN_OR_RETURN(network_teardown_,
                   r.AddHistogram({.name = "fcvm_network_teardown_duration_seconds",
                                   .help = "Time to tear down a VM's network, teardowns that succeeded."},
                                  kPhaseBounds));
  ASSIGN_OR_RETURN(network_failures_,
                   r.AddCounterFamily({.name = "fcvm_network_failures_total",
                                       .help = "VM network setups and teardowns that failed, by operation "
                                               "and status code.",
                                       .labels = {"operation", "code"}}));
  for (const char* operation : {"setup", "teardown"}) {
    for (const std::string& code : FailureCodes()) network_failures_->WithLabels({operation, code});
  }
  return absl::OkStatus();
}

// ---- hooks ----

void VmMetrics::CloneStarted(MemoryBackend backend) { clones_started_[Index(backend)]->Increment(); }

void VmMetrics::CloneFinished(MemoryBackend backend, const absl::Status& status, const VmInfo* vm) {
  const char* name = MemoryBackendName(backend);
  if (!status.ok() || vm == nullptr) {
    clones_failed_->WithLabels({name, CodeName(status.ok() ? absl::UnknownError("") : status)}).Increment();
    return;
  }
  const VmTimings& t = vm->timings;
  clone_duration_[Index(backend)]->Observe(absl::ToDoubleSeconds(t.total));
  auto phase = [&](const char* p, absl::Duration d) {
    clone_phase_->WithLabels({name, p}).Observe(absl::ToDoubleSeconds(d));
  };
  if (!t.from_warm_pool) phase("process_ready", t.process_ready);
  phase("disks", t.disks);
  phase("load", t.load);
  if (vm->resolved_policy == ClonePolicy::kPrefetch) phase("prefetch", t.prefetch);
  if (vm->config.network.enabled) phase("network", t.network);
}

void VmMetrics::SnapshotCreated(const absl::Status& status, absl::Duration took, uint64_t bytes) {
  if (!status.ok()) {
    snapshot_failures_->WithLabels({CodeName(status)}).Increment();
    return;
  }
  snapshot_duration_->Observe(absl::ToDoubleSeconds(took));
  snapshot_bytes_->Add(static_cast<double>(bytes));
}

void VmMetrics::VmDeleted(bool forced) { deleted_[forced ? 1 : 0]->Increment(); }

void VmMetrics::VmExited(VmState to) {
  (to == VmState::kFailed ? exited_failed_ : exited_stopped_)->Increment();
}

void VmMetrics::SessionDropped(uffd::SessionEventKind kind) {
  if (kind == uffd::SessionEventKind::kFailed) dropped_failed_->Increment();
  if (kind == uffd::SessionEventKind::kRejected) dropped_rejected_->Increment();
}

// ---- scrape-time families ----

uffd::ServerStats VmMetrics::PagerStats(Core* core) {
  absl::MutexLock lock(&stats_mu_);
  absl::Time now = absl::Now();
  if (now - stats_at_ > kStatsMaxAge) {
    stats_ = core->env.pager->GetStats();
    stats_at_ = now;
  }
  return stats_;
}

absl::Status VmMetrics::AddCallbacks(Core* core) {
  metrics::Registry& r = *registry_;
  std::vector<metrics::CallbackHandle> handles;
  auto add = [&](MetricType type, metrics::MetricDesc desc, metrics::CollectFn fn) -> absl::Status {
    ASSIGN_OR_RETURN(metrics::CallbackHandle h, r.AddCallback(type, std::move(desc), std::move(fn)));
    handles.push_back(std::move(h));
    return absl::OkStatus();
  };
  auto one = [](double v) { return std::vector<Sample>{{{}, v}}; };

  RETURN_IF_ERROR(
      add(MetricType::kGauge, {.name = "fcvm_vms", .help = "VMs by state.", .labels = {"state"}}, [core] {
        std::vector<Sample> out;
        for (const auto& [state, n] : core->registry.CountByState()) {
          out.push_back({{std::string(StateName(state))}, static_cast<double>(n)});
        }
        return out;
      }));
  RETURN_IF_ERROR(add(MetricType::kGauge,
                      {.name = "fcvm_warm_pool_ready", .help = "Warm-pool Firecracker processes ready."},
                      [core, one] { return one(static_cast<double>(core->warm->ready())); }));
  RETURN_IF_ERROR(
      add(MetricType::kGauge,
          {.name = "fcvm_warm_pool_target",
           .help = "Warm-pool processes fcvmd keeps ready (--warm-pool; 0 = off)."},
          [core, one] { return one(core->env.vmms == nullptr ? 0 : core->options.warm_pool_size); }));
  RETURN_IF_ERROR(add(MetricType::kCounter,
                      {.name = "fcvm_warm_pool_misses_total",
                       .help = "Clones and boots that could use a warm-pool process but found none ready."},
                      [core, one] { return one(static_cast<double>(core->warm->misses())); }));

  // The page server's counters, every session it ever served (closed ones
  // included), in 4 KiB pages.
  struct PagerCounter {
    const char* name;
    const char* help;
    uint64_t uffd::PageStats::*field;
  };
  static constexpr PagerCounter kPagerCounters[] = {
      {"fcvm_page_server_faults_total", "Guest page faults the page server resolved.",
       &uffd::PageStats::faults},
      {"fcvm_page_server_pages_copied_total",
       "4 KiB pages installed with data (UFFDIO_COPY): faults, fault-around and prefetch.",
       &uffd::PageStats::pages_copied},
      {"fcvm_page_server_zero_pages_total",
       "4 KiB pages installed as zero pages (all-zero or removed ranges).", &uffd::PageStats::zero_pages},
      {"fcvm_page_server_prefetched_pages_total", "4 KiB pages installed by working-set prefetch.",
       &uffd::PageStats::prefetched_pages},
      {"fcvm_page_server_copied_bytes_total", "Bytes copied into guests.", &uffd::PageStats::bytes_copied},
      {"fcvm_page_server_eagain_retries_total",
       "userfaultfd ioctls that returned EAGAIN (an event was pending) and were retried.",
       &uffd::PageStats::eagain},
      {"fcvm_page_server_remove_events_total", "UFFD_EVENT_REMOVE events (balloon) handled.",
       &uffd::PageStats::remove_events},
  };
  for (const PagerCounter& c : kPagerCounters) {
    RETURN_IF_ERROR(add(MetricType::kCounter, {.name = c.name, .help = c.help}, [this, core, c, one] {
      return one(static_cast<double>(PagerStats(core).total.*(c.field)));
    }));
  }
  RETURN_IF_ERROR(
      add(MetricType::kGauge,
          {.name = "fcvm_page_server_sessions", .help = "Clone sessions the page server serves now."},
          [this, core, one] {
            uint64_t n = 0;
            for (const uffd::ListenerStats& l : PagerStats(core).listeners) n += l.sessions_active;
            return one(static_cast<double>(n));
          }));
  ASSIGN_OR_RETURN(
      metrics::CallbackHandle faults,
      r.AddHistogramCallback(
          {.name = "fcvm_page_server_fault_duration_seconds",
           .help = "Time to resolve a guest page fault, from reading the event to the "
                   "page installed."},
          FaultLatencyBounds(), [this, core] {
            uffd::ServerStats s = PagerStats(core);
            return std::vector<metrics::HistogramSample>{
                {{}, FoldFaultLatency(s.total.latency), static_cast<double>(s.total.latency_sum_ns) / 1e9}};
          }));
  handles.push_back(std::move(faults));

  absl::MutexLock lock(&callbacks_mu_);
  for (auto& h : handles) callbacks_.push_back(std::move(h));
  return absl::OkStatus();
}

void VmMetrics::RemoveCallbacks() {
  std::vector<metrics::CallbackHandle> handles;
  {
    absl::MutexLock lock(&callbacks_mu_);
    handles.swap(callbacks_);
  }
  handles.clear();  // each waits for a running callback
}

}  // namespace fcvm::vm
