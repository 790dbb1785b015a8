#include "lib/vm/record.h"

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "nlohmann/json.hpp"

namespace fcvm::vm {
namespace {

using json = nlohmann::json;

json LimitsToObject(const ResourceLimits& l) {
  return {{"memory_mib", l.memory_mib},
          {"cpu_percent", l.cpu_percent},
          {"cpu_weight", l.cpu_weight},
          {"pids_max", l.pids_max}};
}

ResourceLimits LimitsFromObject(const json& j) {
  ResourceLimits l;
  l.memory_mib = j.value("memory_mib", 0u);
  l.cpu_percent = j.value("cpu_percent", 0u);
  l.cpu_weight = j.value("cpu_weight", 0u);
  l.pids_max = j.value("pids_max", 0u);
  return l;
}

json ConfigToObject(const VmConfig& c) {
  json j;
  j["kernel_path"] = c.kernel_path;
  j["initrd_path"] = c.initrd_path;
  j["boot_args"] = c.boot_args;
  j["vcpu_count"] = c.vcpu_count;
  j["memory_mib"] = c.memory_mib;
  j["drives"] = json::array();
  for (const DriveConfig& d : c.drives) {
    j["drives"].push_back({{"drive_id", d.drive_id},
                           {"path", d.path},
                           {"is_root_device", d.is_root_device},
                           {"read_only", d.read_only}});
  }
  j["network"] = {
      {"enabled", c.network.enabled}, {"guest_mac", c.network.guest_mac}, {"publish", json::array()}};
  for (const PortMapping& p : c.network.publish) {
    j["network"]["publish"].push_back(
        {{"host_port", p.host_port}, {"guest_port", p.guest_port}, {"protocol", p.protocol}});
  }
  if (!c.mmds_version.empty()) j["mmds_version"] = c.mmds_version;
  if (c.vsock.enabled) j["vsock"] = {{"enabled", true}, {"guest_cid", c.vsock.guest_cid}};
  j["limits"] = LimitsToObject(c.limits);
  j["huge_pages"] = HugePagesName(c.huge_pages);
  return j;
}

// Throws json::exception on a wrong type; the callers catch.
VmConfig ConfigFromObject(const json& j) {
  VmConfig c;
  c.kernel_path = j.value("kernel_path", "");
  c.initrd_path = j.value("initrd_path", "");
  c.boot_args = j.value("boot_args", "");
  c.vcpu_count = j.value("vcpu_count", 1u);
  c.memory_mib = j.value("memory_mib", 128u);
  c.mmds_version = j.value("mmds_version", "");
  if (j.contains("vsock")) {
    c.vsock.enabled = j.at("vsock").value("enabled", false);
    c.vsock.guest_cid = j.at("vsock").value("guest_cid", 0u);
  }
  if (j.contains("drives")) {
    for (const json& d : j.at("drives")) {
      c.drives.push_back({d.value("drive_id", ""), d.value("path", ""), d.value("is_root_device", false),
                          d.value("read_only", false)});
    }
  }
  if (j.contains("network")) {
    const json& n = j.at("network");
    c.network.enabled = n.value("enabled", false);
    c.network.guest_mac = n.value("guest_mac", "");
    if (n.contains("publish")) {
      for (const json& p : n.at("publish")) {
        c.network.publish.push_back({p.value("host_port", uint16_t{0}), p.value("guest_port", uint16_t{0}),
                                     p.value("protocol", "tcp")});
      }
    }
  }
  if (j.contains("limits")) c.limits = LimitsFromObject(j.at("limits"));
  // Absent in records written before huge pages: none. An unknown value
  // (from a newer fcvmd) is kept as a huge-page guest rather than guessed
  // small: its snapshot's File clones would fail in Firecracker anyway.
  if (j.contains("huge_pages") && !ParseHugePages(j.value("huge_pages", ""), &c.huge_pages)) {
    c.huge_pages = HugePages::k2M;
  }
  return c;
}

json PortsToArray(const std::vector<PortMapping>& ports) {
  json a = json::array();
  for (const PortMapping& p : ports) {
    a.push_back({{"host_port", p.host_port}, {"guest_port", p.guest_port}, {"protocol", p.protocol}});
  }
  return a;
}

ClonePolicy PolicyFrom(const json& j, const char* key, ClonePolicy fallback) {
  ClonePolicy p = fallback;
  if (j.contains(key) && j.at(key).is_string())
    (void)uffd::ParseClonePolicy(j.at(key).get<std::string>(), &p);
  return p;
}

}  // namespace

std::string ConfigToJson(const VmConfig& config) { return ConfigToObject(config).dump(); }

absl::StatusOr<VmConfig> ConfigFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("vm config is not a JSON object");
  try {
    return ConfigFromObject(j);
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("vm config: ", e.what()));
  }
}

uint64_t SnapshotPageSize(const storage::SnapshotRecord& record, const VmConfig& config) {
  return record.memory_page_size != 0 ? record.memory_page_size : GuestPageSize(config.huge_pages);
}

std::string RecordToJson(const VmInfo& v) {
  json j;
  j["id"] = v.id;
  j["name"] = v.name;
  j["labels"] = v.labels;
  j["state"] = std::string(StateName(v.state));
  j["config"] = ConfigToObject(v.config);
  j["snapshot_id"] = v.snapshot_id;
  if (!v.memory_base.empty()) j["memory_base"] = v.memory_base;
  if (v.paused_for_snapshot) j["paused_for_snapshot"] = true;
  j["memory_backend"] = MemoryBackendName(v.memory_backend);
  j["prefetch_policy"] = uffd::ClonePolicyName(v.prefetch_policy);
  j["resolved_policy"] = uffd::ClonePolicyName(v.resolved_policy);
  j["pid"] = v.pid;
  j["console_log_path"] = v.console_log_path;
  j["created_at_unix_ns"] = absl::ToUnixNanos(v.created_at);
  j["from_warm_pool"] = v.timings.from_warm_pool;
  j["error"] = v.error;
  if (!v.vsock_path.empty()) j["vsock_path"] = v.vsock_path;
  j["network"] = {{"netns", v.network.netns},         {"tap", v.network.tap},
                  {"guest_ip", v.network.guest_ip},   {"host_ip", v.network.host_ip},
                  {"guest_mac", v.network.guest_mac}, {"publish", PortsToArray(v.network.publish)}};
  if (v.jailed) {
    j["jail"] = {{"uid", v.jail.uid},
                 {"gid", v.jail.gid},
                 {"chroot", v.jail.chroot},
                 {"cgroup_version", v.jail.cgroup_version},
                 {"limits", LimitsToObject(v.jail.limits)}};
  }
  return j.dump(2);
}

absl::StatusOr<VmInfo> RecordFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("vm record is not a JSON object");
  VmInfo v;
  try {
    v.id = j.at("id").get<std::string>();
    v.name = j.value("name", v.id);
    v.labels = j.value("labels", Labels{});
    if (!ParseState(j.value("state", "failed"), &v.state)) v.state = VmState::kFailed;
    if (j.contains("config")) v.config = ConfigFromObject(j.at("config"));
    v.snapshot_id = j.value("snapshot_id", "");
    v.memory_base = j.value("memory_base", "");
    v.paused_for_snapshot = j.value("paused_for_snapshot", false);
    v.memory_backend =
        j.value("memory_backend", "uffd") == "file" ? MemoryBackend::kFile : MemoryBackend::kUffd;
    v.prefetch_policy = PolicyFrom(j, "prefetch_policy", ClonePolicy::kAuto);
    v.resolved_policy = PolicyFrom(j, "resolved_policy", ClonePolicy::kNone);
    v.pid = j.value("pid", 0);
    v.console_log_path = j.value("console_log_path", "");
    v.created_at = absl::FromUnixNanos(j.value("created_at_unix_ns", int64_t{0}));
    v.timings.from_warm_pool = j.value("from_warm_pool", false);
    v.error = j.value("error", "");
    v.vsock_path = j.value("vsock_path", "");
    if (j.contains("network")) {
      const json& n = j.at("network");
      v.network.netns = n.value("netns", "");
      v.network.tap = n.value("tap", "");
      v.network.guest_ip = n.value("guest_ip", "");
      v.network.host_ip = n.value("host_ip", "");
      v.network.guest_mac = n.value("guest_mac", "");
      if (n.contains("publish")) {
        for (const json& p : n.at("publish")) {
          v.network.publish.push_back({p.value("host_port", uint16_t{0}), p.value("guest_port", uint16_t{0}),
                                       p.value("protocol", "tcp")});
        }
      }
    }
    if (j.contains("jail")) {
      const json& jl = j.at("jail");
      v.jailed = true;
      v.jail.uid = jl.value("uid", 0u);
      v.jail.gid = jl.value("gid", 0u);
      v.jail.chroot = jl.value("chroot", "");
      v.jail.cgroup_version = jl.value("cgroup_version", "");
      if (jl.contains("limits")) v.jail.limits = LimitsFromObject(jl.at("limits"));
    }
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("vm record: ", e.what()));
  }
  return v;
}

}  // namespace fcvm::vm
