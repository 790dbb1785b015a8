#pragma once

// Domain types of the VM layer. daemon/convert.cc maps them to and from the
// fcvm.v1 protos; nothing here knows about protobuf.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/vm/state.h"

namespace fcvm::vm {

struct DriveConfig {
  std::string drive_id;  // [A-Za-z0-9_-]{1,64}
  std::string path;      // host image; writable drives get a private copy
  bool is_root_device = false;
  bool read_only = false;
};

struct PortMapping {
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
  std::string protocol = "tcp";  // "tcp" or "udp"
};

struct NetworkConfig {
  bool enabled = false;
  std::string guest_mac;
  std::vector<PortMapping> publish;
};

// The network a VM got (see lib/net): its own namespace with the tap, and a
// unique host-reachable address DNAT'd to the guest's fixed one.
struct NetworkStatus {
  std::string netns;
  std::string tap;
  std::string guest_ip;
  std::string host_ip;  // the VM's unique address
  std::string guest_mac;
  std::vector<PortMapping> publish;
};

struct VmConfig {
  std::string kernel_path;
  std::string initrd_path;
  std::string boot_args;
  uint32_t vcpu_count = 1;
  uint32_t memory_mib = 128;
  std::vector<DriveConfig> drives;
  NetworkConfig network;
};

// JSON used in the state directory and in snapshot records.
std::string ConfigToJson(const VmConfig& config);
absl::StatusOr<VmConfig> ConfigFromJson(const std::string& json);

// Checks a config for RunVm: files exist (InvalidArgument naming the file),
// sizes in range, drive ids valid and unique, at most one root device.
absl::Status ValidateConfig(const VmConfig& config);
// Ports 1-65535, protocol tcp/udp, no host port twice.
absl::Status ValidatePublish(const std::vector<PortMapping>& publish);

enum class MemoryBackend { kUffd, kFile };
enum class PrefetchPolicy { kNone, kRecord, kPrefetch, kAuto };
const char* MemoryBackendName(MemoryBackend backend);
const char* PrefetchPolicyName(PrefetchPolicy policy);

struct VmTimings {
  absl::Duration total;
  absl::Duration process_ready;
  absl::Duration disks;
  absl::Duration load;
  absl::Duration prefetch;
  absl::Duration network;
  bool from_warm_pool = false;
};

// A VM as the API reports it (a copy, consistent at the time it was taken).
struct VmInfo {
  std::string id;
  std::string name;
  std::map<std::string, std::string> labels;
  VmState state = VmState::kCreating;
  VmConfig config;
  std::string snapshot_id;  // set for clones
  MemoryBackend memory_backend = MemoryBackend::kUffd;
  PrefetchPolicy prefetch_policy = PrefetchPolicy::kAuto;
  int32_t pid = 0;
  std::string console_log_path;
  absl::Time created_at;
  VmTimings timings;
  std::string error;
  NetworkStatus network;  // empty without a network
};

enum class AfterSnapshot { kResume, kStayPaused, kStop };

struct SnapshotInfo {
  std::string id;
  std::string name;
  std::map<std::string, std::string> labels;
  std::string source_vm_id;
  VmConfig config;
  std::string firecracker_version;
  uint64_t memory_bytes = 0;
  uint64_t vmstate_bytes = 0;
  uint64_t zero_pages = 0;
  uint64_t working_set_pages = 0;
  std::string vmstate_sha256;
  std::string memory_sha256;
  absl::Time created_at;
  uint32_t clone_count = 0;
  std::string path;
  absl::Duration create_duration;
};

enum class EventKind { kVmState, kSnapshotCreated, kSnapshotDeleted, kPageServerDrop, kReconcile };

struct Event {
  EventKind kind = EventKind::kVmState;
  absl::Time time;
  std::string vm_id;
  std::string snapshot_id;
  VmState state = VmState::kCreating;
  VmState previous_state = VmState::kCreating;
  std::string message;
};

}  // namespace fcvm::vm
