#pragma once

// fcvm.v1 responses -> what fcvmctl prints: tables and key: value listings for
// people, proto JSON for scripts. Pure functions of their arguments (the
// current time is passed in), so tests compare whole outputs.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "fcvm/v1/snapshot.pb.h"
#include "fcvm/v1/system.pb.h"
#include "fcvm/v1/vm.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"

namespace fcvm::cli {

// A plain-text table: a header row, columns two spaces apart and as wide as
// their widest cell, right-aligned where asked (numbers). The last column is
// not padded, so lines carry no trailing blanks.
class Table {
 public:
  explicit Table(std::vector<std::string> headers, std::vector<bool> right_aligned = {});
  // Missing cells print empty; extra cells are dropped.
  void AddRow(std::vector<std::string> cells);
  std::string Render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

// Proto JSON with the field names of the .proto files and every field present
// (preserve_proto_field_names + always_print_primitive_fields); `pretty` adds
// indentation, otherwise the result is one line. Ends with a newline.
std::string ToJson(const google::protobuf::Message& message, bool pretty);

// Enum values as fcvmctl accepts and prints them ("running", "uffd", "auto",
// "vm-state").
std::string StateName(fcvm::v1::VmState state);
std::string BackendName(fcvm::v1::MemoryBackend backend);
std::string PrefetchName(fcvm::v1::PrefetchPolicy policy);
std::string EventKindName(fcvm::v1::Event::Kind kind);

double DurationMs(const google::protobuf::Duration& d);
// "12.3" (milliseconds, one decimal).
std::string FormatMs(double ms);
// "12.3 ms", or "-" when the field is unset.
std::string FormatDuration(const google::protobuf::Duration& d, bool set);
// "2026-11-27T10:55:01.123Z", or "-" when unset.
std::string FormatTime(const google::protobuf::Timestamp& ts);
// "42s", "5m", "3h", "2d"; "-" when unset.
std::string FormatAge(const google::protobuf::Timestamp& ts, absl::Time now);
// "512 MiB", "1.5 GiB", "4096 B".
std::string FormatBytes(uint64_t bytes);
// "app=web,tier=front" (sorted), "-" when empty.
std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels);

// Nearest-rank percentile (p in (0, 100]) of `values`; 0 when empty.
double Percentile(std::vector<double> values, double p);

// ls: ID NAME STATE BACKEND SNAPSHOT PID IP CPU RSS [PSS] FAULTS AGE (CPU is
// the Firecracker's CPU time; PSS when any VM has it; FAULTS for UFFD clones).
std::string FormatVmTable(const fcvm::v1::ListVmsResponse& resp, absl::Time now);
// run, pause, resume: id, name, state, pid, console log (and error if any).
std::string FormatVmSummary(const fcvm::v1::Vm& vm);
// get: every field as "key: value", with config, network, timings and usage.
std::string FormatVmDetails(const fcvm::v1::Vm& vm, absl::Time now);

// snapshot ls: ID NAME SOURCE MEMORY WORKING-SET CLONES AGE.
std::string FormatSnapshotTable(const fcvm::v1::ListSnapshotsResponse& resp, absl::Time now);
// snapshot create, snapshot get: "key: value".
std::string FormatSnapshotDetails(const fcvm::v1::Snapshot& snap, absl::Time now);
// snapshot rm.
std::string FormatDeleteSnapshot(const fcvm::v1::DeleteSnapshotResponse& resp);
// rm, one line per VM.
std::string FormatDeleteVm(const fcvm::v1::DeleteVmResponse& resp);

// clone: one row per clone with its timings in ms, then
// "N succeeded, M failed in T ms; clone total p50 X ms, p99 Y ms" (the
// percentiles are over the clones that succeeded).
std::string FormatCloneResult(const fcvm::v1::CloneSnapshotResponse& resp);
// The forks (as clones), then the snapshot the fork made and how long the
// source was paused.
std::string FormatForkResult(const fcvm::v1::ForkVmResponse& resp);

// stats: one row per clone session, a TOTAL row, then the snapshots' mappings.
std::string FormatPageServerStats(const fcvm::v1::PageServerStats& stats);

// watch: one line, no newline: time, kind, object, transition, message.
std::string FormatEvent(const fcvm::v1::Event& event);

}  // namespace fcvm::cli
