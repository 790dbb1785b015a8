#pragma once

// lib/vm's Prometheus metrics (docs/operations.md lists every one): what the
// operations report as they happen (clones, snapshots, deletes, exits,
// page-server drops, network setup and teardown), and families computed at
// scrape time from the manager's state (VMs by state, the warm pool, the page
// server's counters and fault-latency histogram).
//
// The operations call the hooks unconditionally: without a registry to
// export to, VmMetrics registers into a private one that nobody scrapes.
// Label values come from fixed sets (backends, status codes, phases, states);
// nothing is labelled by VM.
//
// Thread-safety: every hook is thread-safe and lock-free (relaxed atomics).
// The scrape-time families run on the scraping thread; RemoveCallbacks waits
// for a running one, so the manager calls it before it tears anything down.

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/metrics/registry.h"
#include "lib/uffd/page_server.h"
#include "lib/vm/env.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

struct Core;

// Bucket bounds of the page server's fault-latency histogram, in seconds:
// 2^9 .. 2^27 ns (512 ns .. 134 ms), edges of the page server's own
// log-linear buckets, so the exported counts are exact (a fault of exactly
// 2^k ns counts in the bucket above).
std::vector<double> FaultLatencyBounds();
// The page server's latency buckets folded into FaultLatencyBounds()'s
// (non-cumulative, +Inf last), for a HistogramSample.
std::vector<uint64_t> FoldFaultLatency(const uffd::LatencyHistogram& latency);

class VmMetrics {
 public:
  // Registers the event families in `registry`, or in a private registry
  // when it is null. Errors: the registry's (AlreadyExists when another
  // manager registered them in the same registry).
  static absl::StatusOr<std::unique_ptr<VmMetrics>> Create(metrics::Registry* registry);
  ~VmMetrics();
  VmMetrics(const VmMetrics&) = delete;
  VmMetrics& operator=(const VmMetrics&) = delete;

  // ---- hooks ----
  // CloneOne is about to run for one clone of a request.
  void CloneStarted(MemoryBackend backend);
  // That clone ended: running (`status` OK, `vm` what it became: its timings
  // go into the histograms) or failed (counted by status code).
  void CloneFinished(MemoryBackend backend, const absl::Status& status, const VmInfo* vm);
  // A CreateSnapshot call ended; `took` and `bytes` (memory + vmstate files)
  // are used when it succeeded.
  void SnapshotCreated(const absl::Status& status, absl::Duration took, uint64_t bytes);
  // A VM was deleted (forced: SIGKILL was needed or asked for).
  void VmDeleted(bool forced);
  // A VM's process exited without being asked to; `to` is kStopped or kFailed.
  void VmExited(VmState to);
  // The page server ended a clone's session abnormally (kFailed, kRejected).
  void SessionDropped(uffd::SessionEventKind kind);

  // The NetworkService with its Setup and Teardown timed and counted.
  std::unique_ptr<NetworkService> Wrap(std::unique_ptr<NetworkService> network);

  // ---- scrape-time families ----
  // Registers the families that read `core` (VMs by state, warm pool, page
  // server). Call once the core is complete.
  absl::Status AddCallbacks(Core* core);
  // Unregisters them, waiting for a scrape in progress. Idempotent.
  void RemoveCallbacks();

 private:
  class MeteredNetwork;
  explicit VmMetrics(metrics::Registry* registry);
  absl::Status Register();
  // The page server's counters, fetched at most once per kStatsMaxAge so that
  // the families of one scrape share one GetStats.
  uffd::ServerStats PagerStats(Core* core);

  std::unique_ptr<metrics::Registry> own_registry_;
  metrics::Registry* registry_;

  // Series looked up once (label values are fixed sets), indexed by backend.
  metrics::Counter* clones_started_[2] = {};
  metrics::CounterFamily* clones_failed_ = nullptr;
  metrics::Histogram* clone_duration_[2] = {};
  metrics::HistogramFamily* clone_phase_ = nullptr;
  metrics::Histogram* snapshot_duration_ = nullptr;
  metrics::Counter* snapshot_bytes_ = nullptr;
  metrics::CounterFamily* snapshot_failures_ = nullptr;
  metrics::Counter* deleted_[2] = {};  // graceful, forced
  metrics::Counter* exited_stopped_ = nullptr;
  metrics::Counter* exited_failed_ = nullptr;
  metrics::Counter* dropped_failed_ = nullptr;
  metrics::Counter* dropped_rejected_ = nullptr;
  metrics::Histogram* network_setup_ = nullptr;
  metrics::Histogram* network_teardown_ = nullptr;
  metrics::CounterFamily* network_failures_ = nullptr;

  absl::Mutex callbacks_mu_;
  std::vector<metrics::CallbackHandle> callbacks_ ABSL_GUARDED_BY(callbacks_mu_);

  absl::Mutex stats_mu_;
  absl::Time stats_at_ ABSL_GUARDED_BY(stats_mu_) = absl::InfinitePast();
  uffd::ServerStats stats_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace fcvm::vm
