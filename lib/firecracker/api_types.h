#pragma once

// Request and response bodies of Firecracker's API (1.12 and later), and their
// JSON encoding. Field names follow Firecracker's swagger spec; optional
// fields are std::optional and left out of the JSON when unset, so
// Firecracker applies its own defaults.
//
// The encoders never fail; the decoders return InvalidArgument (quoting the
// body) for malformed or incomplete JSON. Nothing here throws.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fcvm::firecracker {

// PUT /boot-source
struct BootSource {
  std::string kernel_image_path;
  std::string boot_args;
  std::optional<std::string> initrd_path;
};

// PUT /machine-config
struct MachineConfig {
  int vcpu_count = 1;
  int64_t mem_size_mib = 128;
  std::optional<bool> smt;
  // KVM dirty-page log for Diff snapshots (without it, Firecracker 1.13+
  // over-approximates the dirty set with mincore(2)).
  std::optional<bool> track_dirty_pages;
  std::optional<std::string> huge_pages;  // "None", "2M"
};

// PUT /drives/{drive_id}
struct Drive {
  std::string drive_id;
  std::string path_on_host;
  bool is_root_device = false;
  bool is_read_only = false;
  std::optional<std::string> cache_type;  // "Unsafe" or "Writeback"
  std::optional<std::string> io_engine;   // "Sync" or "Async"
};

// PUT /network-interfaces/{iface_id}
struct NetworkInterface {
  std::string iface_id;
  std::string host_dev_name;  // the tap
  std::optional<std::string> guest_mac;
};

// PUT /logger. Firecracker appends to `log_path` (a file or fifo).
struct LoggerConfig {
  std::string log_path;
  std::optional<std::string> level;  // Error, Warning, Info, Debug, Trace, Off
  std::optional<bool> show_level;
  std::optional<bool> show_log_origin;
};

// PUT /metrics. Firecracker writes one JSON line per flush to `metrics_path`.
struct MetricsConfig {
  std::string metrics_path;
};

// PUT /mmds/config, before boot: which interfaces may reach the metadata
// service (169.254.169.254 by default) and its version. A snapshot keeps
// this; it does not keep the data (PUT /mmds after each load).
struct MmdsConfig {
  std::string version = "V2";  // "V1" or "V2" (session tokens)
  std::vector<std::string> network_interfaces;
  std::optional<std::string> ipv4_address;
};

// PUT /vsock, before boot. Firecracker listens on `uds_path` for
// host-initiated connections ("CONNECT <port>\n") and connects to
// "<uds_path>_<port>" for guest-initiated ones; the path is kept in a
// snapshot.
struct VsockDevice {
  uint32_t guest_cid = 3;
  std::string uds_path;
};

enum class SnapshotType { kFull, kDiff };

// PUT /snapshot/create, on a paused VM.
struct SnapshotCreate {
  SnapshotType type = SnapshotType::kFull;
  std::string snapshot_path;  // the vmstate file
  std::string mem_file_path;
};

enum class MemBackend { kFile, kUffd };

struct NetworkOverride {
  std::string iface_id;
  std::string host_dev_name;
};

// PUT /snapshot/load, on a fresh, unconfigured Firecracker. Any failure makes
// that Firecracker exit.
struct SnapshotLoad {
  std::string snapshot_path;
  MemBackend backend = MemBackend::kFile;
  // File: the memory file. Uffd: the Unix socket a page server listens on.
  std::string backend_path;
  bool resume_vm = false;
  std::optional<bool> track_dirty_pages;
  std::vector<NetworkOverride> network_overrides;
};

enum class VmState { kNotStarted, kRunning, kPaused };

// GET /
struct InstanceInfo {
  std::string id;
  VmState state = VmState::kNotStarted;
  std::string state_text;  // as Firecracker sent it
  std::string vmm_version;
  std::string app_name;
};

std::string ToJson(const BootSource& v);
std::string ToJson(const MachineConfig& v);
std::string ToJson(const Drive& v);
std::string ToJson(const NetworkInterface& v);
std::string ToJson(const LoggerConfig& v);
std::string ToJson(const MetricsConfig& v);
std::string ToJson(const MmdsConfig& v);
std::string ToJson(const VsockDevice& v);
std::string ToJson(const SnapshotCreate& v);
std::string ToJson(const SnapshotLoad& v);
// {"action_type":"InstanceStart"} etc.
std::string ActionJson(absl::string_view action_type);
// {"state":"Paused"} / {"state":"Resumed"}
std::string VmStateJson(bool paused);

absl::StatusOr<InstanceInfo> ParseInstanceInfo(absl::string_view body);
// GET /version: {"firecracker_version":"1.14.2"} -> "1.14.2"
absl::StatusOr<std::string> ParseFirecrackerVersion(absl::string_view body);
// The "fault_message" of an error body; nullopt when the body is not such an
// object (then the caller quotes the raw body).
std::optional<std::string> ParseFaultMessage(absl::string_view body);

absl::string_view ToString(VmState state);

}  // namespace fcvm::firecracker
