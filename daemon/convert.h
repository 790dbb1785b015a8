#pragma once

// Proto <-> domain conversion: the only place where fcvm.v1 messages meet the
// lib/vm and lib/uffd types (lib/ never sees generated code).
//
// Requests: FromProto checks what only the API layer can know (enum values
// the domain does not have, fields the domain cannot honour yet, ranges the
// proto documents) and answers InvalidArgument / Unimplemented naming the
// field; every other check is the Manager's. Responses: ToProto fills the
// message it is given (fields it has no data for stay at their defaults).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fcvm/v1/snapshot.pb.h"
#include "fcvm/v1/system.pb.h"
#include "fcvm/v1/vm.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "lib/uffd/page_server.h"
#include "lib/uffd/stats.h"
#include "lib/vm/manager.h"
#include "lib/vm/types.h"

namespace fcvm::daemon {

// Time. A zero absl::Time (the Unix epoch, "never set") leaves the timestamp
// unset.
void ToProto(absl::Duration d, google::protobuf::Duration* out);
void ToProto(absl::Time t, google::protobuf::Timestamp* out);
absl::Duration FromProto(const google::protobuf::Duration& d);

// Enums. UNSPECIFIED maps to the documented default (MemoryBackend UFFD,
// PrefetchPolicy AUTO, AfterSnapshot RESUME); values this fcvmd does not know
// are InvalidArgument.
fcvm::v1::VmState ToProto(vm::VmState state);
absl::StatusOr<vm::VmState> FromProto(fcvm::v1::VmState state);
fcvm::v1::MemoryBackend ToProto(vm::MemoryBackend backend);
absl::StatusOr<vm::MemoryBackend> FromProto(fcvm::v1::MemoryBackend backend);
fcvm::v1::PrefetchPolicy ToProto(vm::ClonePolicy policy);
absl::StatusOr<vm::ClonePolicy> FromProto(fcvm::v1::PrefetchPolicy policy);
absl::StatusOr<vm::AfterSnapshot> FromProto(fcvm::v1::AfterSnapshot after);
fcvm::v1::Event::Kind ToProto(vm::EventKind kind);

// VmConfig. Ports wider than 16 bits are InvalidArgument; an empty protocol
// is "tcp". Other checks (ranges, duplicates, files) are the Manager's.
absl::StatusOr<vm::VmConfig> FromProto(const fcvm::v1::VmConfig& config);
vm::ResourceLimits FromProto(const fcvm::v1::ResourceLimits& limits);
void ToProto(const vm::ResourceLimits& limits, fcvm::v1::ResourceLimits* out);
void ToProto(const vm::VmConfig& config, fcvm::v1::VmConfig* out);
// `field` prefixes errors ("config.network").
absl::StatusOr<std::vector<vm::PortMapping>> FromProto(
    const google::protobuf::RepeatedPtrField<fcvm::v1::PortMapping>& publish, absl::string_view field);
void ToProto(const std::vector<vm::PortMapping>& publish,
             google::protobuf::RepeatedPtrField<fcvm::v1::PortMapping>* out);

void ToProto(const vm::VmInfo& info, fcvm::v1::Vm* out);
void ToProto(const vm::VmUsage& usage, fcvm::v1::VmUsage* out);
// A request's UsageDetail; UNSPECIFIED is `unspecified_means` (the rpc's
// default), an unknown value InvalidArgument.
enum class UsageWanted { kNone, kBasic, kWithPss };
absl::StatusOr<UsageWanted> FromProto(fcvm::v1::UsageDetail detail, fcvm::v1::UsageDetail unspecified_means);
void ToProto(const vm::SnapshotInfo& info, fcvm::v1::Snapshot* out);
void ToProto(const vm::Event& event, fcvm::v1::Event* out);
void ToProto(const uffd::PageStats& stats, fcvm::v1::FaultStats* out);

// Requests.
absl::StatusOr<vm::RunRequest> FromProto(const fcvm::v1::RunVmRequest& request);
absl::StatusOr<vm::ListFilter> FromProto(const fcvm::v1::ListVmsRequest& request);
// grace_period: unset = 5 s; negative is InvalidArgument.
absl::StatusOr<absl::Duration> DeleteGrace(const fcvm::v1::DeleteVmRequest& request);
absl::StatusOr<vm::SnapshotRequest> FromProto(const fcvm::v1::CreateSnapshotRequest& request);
// count must be 1-1024. `network` may add published ports; its guest_mac
// must be empty (clones keep the snapshot's MAC); its `enabled` becomes
// CloneRequest::network_enabled, which the manager checks against the
// snapshot's.
absl::StatusOr<vm::CloneRequest> FromProto(const fcvm::v1::CloneSnapshotRequest& request);
absl::StatusOr<vm::ForkRequest> FromProto(const fcvm::v1::ForkVmRequest& request);

// Responses.
void ToProto(const vm::DeleteResult& result, fcvm::v1::DeleteVmResponse* out);
void ToProto(const vm::DeleteSnapshotResult& result, fcvm::v1::DeleteSnapshotResponse* out);
void ToProto(const vm::CloneResult& result, fcvm::v1::CloneSnapshotResponse* out);
void ToProto(const vm::ForkResult& result, fcvm::v1::ForkVmResponse* out);

// What PageServerStats needs beyond uffd::ServerStats, which knows memory
// files and listener tags (a clone's VM id) but not snapshots or policies.
struct PageServerContext {
  uint32_t loop_threads = 0;
  uint64_t dropped_sessions = 0;
  // Only sessions whose listener tag is this VM id; empty = all.
  std::string vm_id;
  struct Clone {
    std::string snapshot_id;
    vm::ClonePolicy policy = vm::ClonePolicy::kAuto;
  };
  std::map<std::string, Clone> clones;  // by VM id (= listener tag)
  struct SnapshotFile {
    std::string snapshot_id;
    uint64_t memory_bytes = 0;
  };
  std::map<std::string, SnapshotFile> memory_files;  // by memory file path
};
void ToProto(const uffd::ServerStats& stats, const PageServerContext& context,
             fcvm::v1::PageServerStats* out);

}  // namespace fcvm::daemon
