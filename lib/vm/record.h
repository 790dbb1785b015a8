#pragma once

// The JSON forms of lib/vm's records: a VM's config (also stored in each
// snapshot's meta.json) and a VM's record, <state>/vms/<id>/vm.json, which a
// restarted fcvmd reads to find its VMs again.
//
// Decoding is lenient about missing fields (older records) and strict about
// types: DataLoss naming the record for anything that is not what it should
// be. Nothing here throws.

#include <string>

#include "absl/status/statusor.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

std::string ConfigToJson(const VmConfig& config);
absl::StatusOr<VmConfig> ConfigFromJson(const std::string& json);

std::string RecordToJson(const VmInfo& info);
absl::StatusOr<VmInfo> RecordFromJson(const std::string& json);

}  // namespace fcvm::vm
