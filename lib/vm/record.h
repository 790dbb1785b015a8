#pragma once

// The JSON forms of lib/vm's records: a VM's config (also stored in each
// snapshot's meta.json) and a VM's record, <state>/vms/<id>/vm.json, which a
// restarted fcvmd reads to find its VMs again.
//
// Decoding is lenient about missing fields (older records) and strict about
// types: DataLoss naming the record for anything that is not what it should
// be. Nothing here throws.

#include <string>

#include <cstdint>

#include "absl/status/statusor.h"
#include "lib/storage/snapshot_store.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

std::string ConfigToJson(const VmConfig& config);
absl::StatusOr<VmConfig> ConfigFromJson(const std::string& json);

// The page size of a snapshot's guest memory: what its record says, or for
// records written before it said, what its VM's config implies.
uint64_t SnapshotPageSize(const storage::SnapshotRecord& record, const VmConfig& config);

std::string RecordToJson(const VmInfo& info);
absl::StatusOr<VmInfo> RecordFromJson(const std::string& json);

}  // namespace fcvm::vm
