#pragma once

// fcvmctl top: VMs sorted by what they use, like top(1). Two ListVms
// answers taken `interval` apart give each VM's CPU % (the difference of its
// Firecracker's CPU time divided by the difference of the samples' times,
// 100 % = one core) and faults per second; the rest is the later sample.
// Pure functions of their arguments, so tests compare whole outputs.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fcvm/v1/vm.pb.h"

namespace fcvm::cli {

enum class TopSort { kCpu, kRss, kPss, kFaults, kUptime, kName };
// "cpu", "rss", "pss", "faults", "uptime", "name".
absl::StatusOr<TopSort> ParseTopSort(absl::string_view name);

struct TopOptions {
  fcvm::v1::ListVmsRequest list;  // filters, and usage detail (FULL with --pss)
  absl::Duration interval = absl::Seconds(2);
  TopSort sort = TopSort::kCpu;
  // Frames to print before exiting; 0 = until interrupted.
  int64_t iterations = 0;
};

struct TopRow {
  std::string id;
  std::string name;
  fcvm::v1::VmState state = fcvm::v1::VM_STATE_UNSPECIFIED;
  bool has_usage = false;  // the later sample has its usage
  // Over the interval; nullopt when the earlier sample lacks the VM (new).
  std::optional<double> cpu_percent;
  std::optional<double> faults_per_second;
  double cpu_seconds = 0;
  uint64_t rss_bytes = 0;
  std::optional<uint64_t> pss_bytes;
  uint64_t page_faults_served = 0;
  double uptime_seconds = 0;
};

// One row per VM of `now`, sorted by `sort` (descending for numbers, a VM
// without a value last; by name ascending), ties by name then id.
std::vector<TopRow> ComputeTop(const fcvm::v1::ListVmsResponse& before, const fcvm::v1::ListVmsResponse& now,
                               TopSort sort);

// A frame: a summary line ("fcvm top - 12:00:01, 12 VMs: 10 running, 2
// paused; CPU 35.2 %, RSS 1.2 GiB") and the table.
std::string FormatTop(const std::vector<TopRow>& rows, absl::Time now, bool pss);

// --json: {"sampled_at", "interval_seconds", "vms": [{id, name, state,
// cpu_percent, cpu_seconds, rss_bytes, pss_bytes, page_faults_served,
// faults_per_second, uptime_seconds}]} on one line (absent values: null).
std::string TopJson(const std::vector<TopRow>& rows, absl::Time sampled_at, absl::Duration interval);

// "0.35s", "12.4s", "5m03s", "2h07m", "3d04h".
std::string FormatSeconds(double seconds);

}  // namespace fcvm::cli
