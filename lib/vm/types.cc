#include "lib/vm/types.h"

#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "nlohmann/json.hpp"

namespace fcvm::vm {

using json = nlohmann::json;

const char* MemoryBackendName(MemoryBackend backend) {
  return backend == MemoryBackend::kFile ? "file" : "uffd";
}

const char* PrefetchPolicyName(PrefetchPolicy policy) {
  switch (policy) {
    case PrefetchPolicy::kNone:
      return "none";
    case PrefetchPolicy::kRecord:
      return "record";
    case PrefetchPolicy::kPrefetch:
      return "prefetch";
    case PrefetchPolicy::kAuto:
      return "auto";
  }
  return "auto";
}

std::string ConfigToJson(const VmConfig& c) {
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
  return j.dump();
}

absl::StatusOr<VmConfig> ConfigFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("vm config is not a JSON object");
  VmConfig c;
  try {
    c.kernel_path = j.value("kernel_path", "");
    c.initrd_path = j.value("initrd_path", "");
    c.boot_args = j.value("boot_args", "");
    c.vcpu_count = j.value("vcpu_count", 1u);
    c.memory_mib = j.value("memory_mib", 128u);
    if (j.contains("drives")) {
      for (const json& d : j["drives"]) {
        c.drives.push_back({d.value("drive_id", ""), d.value("path", ""), d.value("is_root_device", false),
                            d.value("read_only", false)});
      }
    }
    if (j.contains("network")) {
      c.network.enabled = j["network"].value("enabled", false);
      c.network.guest_mac = j["network"].value("guest_mac", "");
      if (j["network"].contains("publish")) {
        for (const json& p : j["network"]["publish"]) {
          c.network.publish.push_back({p.value("host_port", uint16_t{0}), p.value("guest_port", uint16_t{0}),
                                       p.value("protocol", "tcp")});
        }
      }
    }
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("vm config: ", e.what()));
  }
  return c;
}

namespace {

absl::Status CheckFile(absl::string_view what, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " path is empty"));
  if (path[0] != '/')
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not an absolute path"));
  struct stat st;
  if (stat(path.c_str(), &st) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": ", ErrnoError("stat").message()));
  }
  if (!S_ISREG(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not a regular file"));
  if (access(path.c_str(), R_OK) < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not readable"));
  return absl::OkStatus();
}

bool ValidDriveId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::Status ValidatePublish(const std::vector<PortMapping>& publish) {
  std::set<std::pair<std::string, uint16_t>> seen;
  for (const PortMapping& p : publish) {
    if (p.protocol != "tcp" && p.protocol != "udp") {
      return absl::InvalidArgumentError(
          absl::StrCat("published port protocol must be tcp or udp, got '", p.protocol, "'"));
    }
    if (p.host_port == 0 || p.guest_port == 0)
      return absl::InvalidArgumentError("published ports must be 1-65535");
    if (!seen.insert({p.protocol, p.host_port}).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("host port ", p.host_port, "/", p.protocol, " published twice"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const VmConfig& c) {
  RETURN_IF_ERROR(CheckFile("kernel", c.kernel_path));
  if (!c.initrd_path.empty()) RETURN_IF_ERROR(CheckFile("initrd", c.initrd_path));
  if (c.vcpu_count < 1 || c.vcpu_count > 32) {
    return absl::InvalidArgumentError(absl::StrCat("vcpu_count must be 1-32, got ", c.vcpu_count));
  }
  if (c.memory_mib < 16 || c.memory_mib > 1024 * 1024) {
    return absl::InvalidArgumentError(absl::StrCat("memory_mib must be at least 16, got ", c.memory_mib));
  }
  if (c.boot_args.size() > 4096) return absl::InvalidArgumentError("boot_args longer than 4096 bytes");
  std::set<std::string> ids;
  int roots = 0;
  for (const DriveConfig& d : c.drives) {
    if (!ValidDriveId(d.drive_id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("drive id '", d.drive_id, "' must be 1-64 of [A-Za-z0-9_-]"));
    }
    if (!ids.insert(d.drive_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("drive id '", d.drive_id, "' appears twice"));
    }
    RETURN_IF_ERROR(CheckFile(absl::StrCat("drive ", d.drive_id), d.path));
    if (d.is_root_device) ++roots;
  }
  if (roots > 1) return absl::InvalidArgumentError("more than one drive is the root device");
  RETURN_IF_ERROR(ValidatePublish(c.network.publish));
  return absl::OkStatus();
}

}  // namespace fcvm::vm
