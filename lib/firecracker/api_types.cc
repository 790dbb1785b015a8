#include "lib/firecracker/api_types.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace fcvm::firecracker {
namespace {

using Json = nlohmann::json;

// dump() throws on invalid UTF-8 by default; `replace` makes it total, which
// matters because paths come from users.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

template <typename T>
void SetIf(Json& j, const char* key, const std::optional<T>& v) {
  if (v.has_value()) j[key] = *v;
}

absl::Status BadBody(absl::string_view what, absl::string_view body) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": \"", absl::CEscape(body.substr(0, 300)), "\""));
}

// Parses without exceptions: a discarded value means malformed JSON.
std::optional<Json> ParseObject(absl::string_view body) {
  Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

std::optional<std::string> StringField(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

}  // namespace

std::string ToJson(const BootSource& v) {
  Json j = {{"kernel_image_path", v.kernel_image_path}, {"boot_args", v.boot_args}};
  SetIf(j, "initrd_path", v.initrd_path);
  return Dump(j);
}

std::string ToJson(const MachineConfig& v) {
  Json j = {{"vcpu_count", v.vcpu_count}, {"mem_size_mib", v.mem_size_mib}};
  SetIf(j, "smt", v.smt);
  SetIf(j, "track_dirty_pages", v.track_dirty_pages);
  SetIf(j, "huge_pages", v.huge_pages);
  return Dump(j);
}

std::string ToJson(const Drive& v) {
  Json j = {{"drive_id", v.drive_id},
            {"path_on_host", v.path_on_host},
            {"is_root_device", v.is_root_device},
            {"is_read_only", v.is_read_only}};
  SetIf(j, "cache_type", v.cache_type);
  SetIf(j, "io_engine", v.io_engine);
  return Dump(j);
}

std::string ToJson(const NetworkInterface& v) {
  Json j = {{"iface_id", v.iface_id}, {"host_dev_name", v.host_dev_name}};
  SetIf(j, "guest_mac", v.guest_mac);
  return Dump(j);
}

std::string ToJson(const LoggerConfig& v) {
  Json j = {{"log_path", v.log_path}};
  SetIf(j, "level", v.level);
  SetIf(j, "show_level", v.show_level);
  SetIf(j, "show_log_origin", v.show_log_origin);
  return Dump(j);
}

std::string ToJson(const MetricsConfig& v) { return Dump(Json{{"metrics_path", v.metrics_path}}); }

std::string ToJson(const MmdsConfig& v) {
  Json j{{"version", v.version}, {"network_interfaces", v.network_interfaces}};
  if (v.ipv4_address.has_value()) j["ipv4_address"] = *v.ipv4_address;
  return Dump(j);
}

std::string ToJson(const VsockDevice& v) {
  return Dump(Json{{"guest_cid", v.guest_cid}, {"uds_path", v.uds_path}});
}

std::string ToJson(const SnapshotCreate& v) {
  return Dump(Json{{"snapshot_type", v.type == SnapshotType::kFull ? "Full" : "Diff"},
                   {"snapshot_path", v.snapshot_path},
                   {"mem_file_path", v.mem_file_path}});
}

std::string ToJson(const SnapshotLoad& v) {
  Json j = {{"snapshot_path", v.snapshot_path},
            {"mem_backend",
             {{"backend_type", v.backend == MemBackend::kFile ? "File" : "Uffd"},
              {"backend_path", v.backend_path}}},
            {"resume_vm", v.resume_vm}};
  SetIf(j, "track_dirty_pages", v.track_dirty_pages);
  if (!v.network_overrides.empty()) {
    Json overrides = Json::array();
    for (const NetworkOverride& o : v.network_overrides) {
      overrides.push_back({{"iface_id", o.iface_id}, {"host_dev_name", o.host_dev_name}});
    }
    j["network_overrides"] = std::move(overrides);
  }
  return Dump(j);
}

std::string ActionJson(absl::string_view action_type) {
  return Dump(Json{{"action_type", std::string(action_type)}});
}

std::string VmStateJson(bool paused) { return Dump(Json{{"state", paused ? "Paused" : "Resumed"}}); }

absl::StatusOr<InstanceInfo> ParseInstanceInfo(absl::string_view body) {
  std::optional<Json> j = ParseObject(body);
  if (!j) return BadBody("instance info is not a JSON object", body);
  InstanceInfo info;
  std::optional<std::string> state = StringField(*j, "state");
  if (!state) return BadBody("instance info has no \"state\"", body);
  info.state_text = *state;
  if (*state == "Not started") {
    info.state = VmState::kNotStarted;
  } else if (*state == "Running") {
    info.state = VmState::kRunning;
  } else if (*state == "Paused") {
    info.state = VmState::kPaused;
  } else {
    return BadBody(absl::StrCat("instance info has unknown state \"", *state, "\""), body);
  }
  info.id = StringField(*j, "id").value_or("");
  info.vmm_version = StringField(*j, "vmm_version").value_or("");
  info.app_name = StringField(*j, "app_name").value_or("");
  return info;
}

absl::StatusOr<std::string> ParseFirecrackerVersion(absl::string_view body) {
  std::optional<Json> j = ParseObject(body);
  if (!j) return BadBody("version is not a JSON object", body);
  std::optional<std::string> v = StringField(*j, "firecracker_version");
  if (!v) return BadBody("version has no \"firecracker_version\"", body);
  return *v;
}

std::optional<std::string> ParseFaultMessage(absl::string_view body) {
  std::optional<Json> j = ParseObject(body);
  if (!j) return std::nullopt;
  return StringField(*j, "fault_message");
}

absl::string_view ToString(VmState state) {
  switch (state) {
    case VmState::kNotStarted:
      return "Not started";
    case VmState::kRunning:
      return "Running";
    case VmState::kPaused:
      return "Paused";
  }
  return "?";
}

}  // namespace fcvm::firecracker
