#include "lib/vm/validate.h"

#include <sys/stat.h>
#include <unistd.h>

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/names.h"
#include "lib/base/status.h"

namespace fcvm::vm {
namespace {

bool IsAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

absl::Status CheckLabelKey(absl::string_view what, absl::string_view key) {
  if (key.empty() || key.size() > kMaxLabelKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": key '", key.substr(0, kMaxLabelKeyBytes),
                                                   key.size() > kMaxLabelKeyBytes ? "...'" : "'",
                                                   " must be 1-", kMaxLabelKeyBytes, " bytes"));
  }
  bool chars_ok = true;
  for (char c : key) chars_ok &= IsAlnum(c) || c == '.' || c == '_' || c == '-' || c == '/';
  if (!chars_ok || !IsAlnum(key.front()) || !IsAlnum(key.back())) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": key '", key, "' must be [A-Za-z0-9._/-] and start and end with a letter or digit"));
  }
  return absl::OkStatus();
}

absl::Status CheckLabelValue(absl::string_view what, absl::string_view key, absl::string_view value) {
  if (value.size() > kMaxLabelValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": value of '", key, "' is ", value.size(),
                                                   " bytes; at most ", kMaxLabelValueBytes));
  }
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": value of '", key, "' contains a control character"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPath(absl::string_view what, const std::string& path) {
  if (path.size() > kMaxPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " path is longer than ", kMaxPathBytes, " bytes"));
  }
  return absl::OkStatus();
}

// The file must be a readable regular file. The message names the file and
// never its contents: anyone who reaches fcvmd's socket could otherwise read
// the first bytes of any file fcvmd can.
absl::Status CheckFile(absl::string_view what, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " path is empty"));
  RETURN_IF_ERROR(CheckPath(what, path));
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
    if (!IsAlnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateLabels(absl::string_view what, const Labels& labels) {
  if (labels.size() > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", labels.size(), " labels; at most ", kMaxLabels));
  }
  size_t bytes = 0;
  for (const auto& [key, value] : labels) {
    RETURN_IF_ERROR(CheckLabelKey(what, key));
    RETURN_IF_ERROR(CheckLabelValue(what, key, value));
    bytes += key.size() + value.size();
  }
  if (bytes > kMaxLabelBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", bytes, " bytes of keys and values; at most ", kMaxLabelBytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateSelector(const Labels& selector) { return ValidateLabels("label selector", selector); }

absl::Status ValidatePublish(const std::vector<PortMapping>& publish) {
  if (publish.size() > kMaxPublishedPorts) {
    return absl::InvalidArgumentError(
        absl::StrCat(publish.size(), " published ports; at most ", kMaxPublishedPorts));
  }
  std::set<std::pair<std::string, uint16_t>> seen;
  for (const PortMapping& p : publish) {
    if (p.protocol != "tcp" && p.protocol != "udp") {
      return absl::InvalidArgumentError(
          absl::StrCat("published port protocol must be tcp or udp, got '", p.protocol.substr(0, 16), "'"));
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
  if (c.vcpu_count < 1 || c.vcpu_count > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrCat("vcpu_count must be 1-", kMaxVcpus, ", got ", c.vcpu_count));
  }
  if (c.memory_mib < kMinMemoryMib || c.memory_mib > kMaxMemoryMib) {
    return absl::InvalidArgumentError(absl::StrCat("memory_mib must be ", kMinMemoryMib, "-", kMaxMemoryMib,
                                                   " (16 MiB to 1 TiB), got ", c.memory_mib));
  }
  if (c.huge_pages == HugePages::k2M && c.memory_mib % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory_mib must be a multiple of 2 with 2M huge pages (whole 2 MiB pages), got ", c.memory_mib));
  }
  if (c.boot_args.size() > kMaxBootArgsBytes) {
    return absl::InvalidArgumentError(absl::StrCat("boot_args is ", c.boot_args.size(), " bytes; at most ",
                                                   kMaxBootArgsBytes,
                                                   " (Firecracker's kernel command line limit)"));
  }
  if (c.drives.size() > kMaxDrives) {
    return absl::InvalidArgumentError(absl::StrCat(c.drives.size(), " drives; at most ", kMaxDrives));
  }
  std::set<std::string> ids;
  int roots = 0;
  for (const DriveConfig& d : c.drives) {
    if (!ValidDriveId(d.drive_id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("drive id '", d.drive_id.substr(0, 64), "' must be 1-64 of [A-Za-z0-9_-]"));
    }
    if (!ids.insert(d.drive_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("drive id '", d.drive_id, "' appears twice"));
    }
    RETURN_IF_ERROR(CheckFile(absl::StrCat("drive ", d.drive_id), d.path));
    if (d.is_root_device) ++roots;
  }
  if (roots > 1) return absl::InvalidArgumentError("more than one drive is the root device");
  if (c.network.guest_mac.size() > 17) {
    return absl::InvalidArgumentError("network.guest_mac must look like 06:00:ac:10:00:02");
  }
  if (!c.network.enabled && !c.network.publish.empty()) {
    return absl::InvalidArgumentError("published ports need the network: enable it or publish nothing");
  }
  RETURN_IF_ERROR(ValidatePublish(c.network.publish));
  if (c.vsock.enabled && c.vsock.guest_cid != 0 &&
      (c.vsock.guest_cid < 3 || c.vsock.guest_cid == UINT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vsock.guest_cid must be 3-4294967294 (0: ", kDefaultGuestCid, "), got ", c.vsock.guest_cid));
  }
  if (!c.vsock.enabled && c.vsock.guest_cid != 0) {
    return absl::InvalidArgumentError("vsock.guest_cid needs vsock.enabled");
  }
  if (!c.mmds_version.empty() && c.mmds_version != "V1" && c.mmds_version != "V2") {
    return absl::InvalidArgumentError(
        absl::StrCat("mmds_version must be V1 or V2 (empty: V2), got '", c.mmds_version.substr(0, 16), "'"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCloneBackend(absl::string_view snapshot_name, uint64_t page_size,
                                  MemoryBackend backend) {
  if (backend != MemoryBackend::kFile || page_size <= 4096) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "memory backend FILE: snapshot ", snapshot_name, " holds guest memory in ", page_size >> 10,
      " KiB huge pages, which Firecracker restores only through the page server: clone it with the UFFD "
      "backend (the default)"));
}

absl::Status ValidateCloneRequest(const CloneRequest& r) {
  if (r.count < 1 || r.count > kMaxCloneCount) {
    return absl::InvalidArgumentError(absl::StrCat("count must be 1-", kMaxCloneCount, ", got ", r.count));
  }
  if (!r.name_prefix.empty()) {
    RETURN_IF_ERROR(ValidateName("clone name prefix", r.name_prefix));
    if (r.name_prefix.size() > kMaxClonePrefixBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("clone name prefix is longer than ", kMaxClonePrefixBytes, " bytes"));
    }
  }
  RETURN_IF_ERROR(ValidateLabels("clone labels", r.labels));
  RETURN_IF_ERROR(ValidatePublish(r.publish));
  if (r.backend == MemoryBackend::kFile && r.policy != ClonePolicy::kAuto && r.policy != ClonePolicy::kNone) {
    return absl::InvalidArgumentError("prefetch policies apply to the UFFD backend only");
  }
  return absl::OkStatus();
}

}  // namespace fcvm::vm
