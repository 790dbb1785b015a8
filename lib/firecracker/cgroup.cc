#include "lib/firecracker/cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {
namespace {

constexpr uint64_t kPage = 4096;

// Mount options of a v1 cgroup mount that are not controllers.
bool IsMountOption(absl::string_view opt) {
  static const char* const kOptions[] = {"rw",          "ro",
                                         "relatime",    "noatime",
                                         "strictatime", "nosuid",
                                         "nodev",       "noexec",
                                         "xattr",       "clone_children",
                                         "noprefix",    "cpuset_v2_mode",
                                         "nsdelegate",  "memory_recursiveprot"};
  if (absl::StrContains(opt, '=')) return true;
  for (const char* o : kOptions) {
    if (opt == o) return true;
  }
  return false;
}

// /proc/mounts escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountField(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && absl::ascii_isdigit(s[i + 1]) && absl::ascii_isdigit(s[i + 2]) &&
        absl::ascii_isdigit(s[i + 3])) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string ControllerOf(absl::string_view file) {
  size_t dot = file.find('.');
  return std::string(dot == absl::string_view::npos ? file : file.substr(0, dot));
}

absl::Status CheckParent(const std::string& parent) {
  if (parent.empty()) return absl::InvalidArgumentError("cgroup parent: empty");
  for (absl::string_view part : absl::StrSplit(parent, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("cgroup parent \"", parent, "\": must be a relative path without . or .. or //"));
    }
    for (char c : part) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
          c != '@' && c != ':') {
        return absl::InvalidArgumentError(absl::StrCat("cgroup parent \"", parent, "\": bad character"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckExtra(const std::string& file, const std::string& value) {
  bool ok = !file.empty() && absl::StrContains(file, '.') && file.front() != '.' &&
            std::all_of(file.begin(), file.end(), [](char c) {
              return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
            });
  if (!ok)
    return absl::InvalidArgumentError(absl::StrCat("cgroup setting \"", file, "\": not <controller>.<file>"));
  if (value.empty() || absl::StrContains(value, '\n') || absl::StrContains(value, '=')) {
    return absl::InvalidArgumentError(absl::StrCat("cgroup setting ", file, "=\"", value, "\": bad value"));
  }
  return absl::OkStatus();
}

// "max" and v1's "unlimited" values read back as 0.
absl::StatusOr<uint64_t> ParseLimit(const std::string& path, absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (text == "max" || text == "-1") return 0;
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::DataLossError(absl::StrCat("cgroup file ", path, ": not a number: \"", text, "\""));
  }
  // v1's memory.limit_in_bytes "unlimited" is PAGE_COUNTER_MAX pages.
  if (v >= (uint64_t{1} << 62)) return 0;
  return v;
}

absl::StatusOr<std::string> ReadCgroupFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return std::string(absl::StripAsciiWhitespace(text));
}

std::string MissingMessage(const CgroupHost& host, CgroupVersion version,
                           const std::set<std::string>& missing) {
  std::set<std::string> have = host.Controllers(version);
  std::string where = version == CgroupVersion::kV2
                          ? (host.v2_mount.empty() ? std::string("no cgroup2 mount") : host.v2_mount)
                          : std::string("the cgroup v1 mounts");
  return absl::StrCat("cgroup v", version == CgroupVersion::kV2 ? 2 : 1, " controller",
                      missing.size() > 1 ? "s " : " ", absl::StrJoin(missing, ", "),
                      missing.size() > 1 ? " are" : " is", " not available in ", where,
                      " (it has: ", have.empty() ? "none" : absl::StrJoin(have, " "), ")");
}

std::set<std::string> Missing(const std::set<std::string>& need, const std::set<std::string>& have) {
  std::set<std::string> out;
  for (const std::string& c : need) {
    if (!have.count(c)) out.insert(c);
  }
  return out;
}

}  // namespace

const char* CgroupVersionName(CgroupVersion v) {
  switch (v) {
    case CgroupVersion::kAuto:
      return "auto";
    case CgroupVersion::kV1:
      return "1";
    case CgroupVersion::kV2:
      return "2";
  }
  return "?";
}

absl::StatusOr<CgroupHost> CgroupHost::Detect(const std::string& mounts_path) {
  ASSIGN_OR_RETURN(std::string mounts, ReadFile(mounts_path));
  CgroupHost host;
  for (absl::string_view line : absl::StrSplit(mounts, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 4) continue;
    std::string dir = UnescapeMountField(f[1]);
    if (f[2] == "cgroup2") {
      if (!host.v2_mount.empty()) continue;  // the jailer uses the first one
      host.v2_mount = dir;
      absl::StatusOr<std::string> controllers = ReadFile(dir + "/cgroup.controllers");
      if (controllers.ok()) {
        for (absl::string_view c : absl::StrSplit(*controllers, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
          host.v2_controllers.insert(std::string(c));
        }
      }
    } else if (f[2] == "cgroup") {
      for (absl::string_view opt : absl::StrSplit(f[3], ',', absl::SkipEmpty())) {
        if (IsMountOption(opt)) continue;
        host.v1_mounts.emplace(std::string(opt), dir);  // first one wins, as in the jailer
      }
    }
  }
  return host;
}

std::set<std::string> CgroupHost::Controllers(CgroupVersion version) const {
  if (version == CgroupVersion::kV2) return v2_controllers;
  std::set<std::string> out;
  for (const auto& [c, dir] : v1_mounts) out.insert(c);
  return out;
}

uint64_t MinMemoryBytes(uint64_t guest_mem_mib) { return (guest_mem_mib << 20) + kVmmMemoryOverheadBytes; }

uint64_t MinPids(int vcpus) {
  return static_cast<uint64_t>(std::max(vcpus, 1)) + kVmmBaseTasks + kVmmTaskMargin;
}

absl::Status CheckLimitsForGuest(const CgroupLimits& limits, int vcpus, uint64_t guest_mem_mib) {
  if (limits.memory_bytes != 0 && limits.memory_bytes < MinMemoryBytes(guest_mem_mib)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory limit ", limits.memory_bytes, " bytes is below what a ", guest_mem_mib,
                     " MiB guest needs: ", MinMemoryBytes(guest_mem_mib), " bytes (guest memory + ",
                     kVmmMemoryOverheadBytes >> 20, " MiB for Firecracker itself)"));
  }
  if (limits.pids_max != 0 && limits.pids_max < MinPids(vcpus)) {
    return absl::InvalidArgumentError(absl::StrCat("pids limit ", limits.pids_max,
                                                   " is below what Firecracker with ", vcpus,
                                                   " vCPU(s) needs: ", MinPids(vcpus)));
  }
  return absl::OkStatus();
}

std::vector<std::string> CgroupPlan::JailerArgs() const {
  if (settings.empty()) return {};
  std::vector<std::string> args = {"--cgroup-version", version == CgroupVersion::kV2 ? "2" : "1",
                                   "--parent-cgroup", parent};
  for (const auto& [file, value] : settings) {
    args.push_back("--cgroup");
    args.push_back(absl::StrCat(file, "=", value));
  }
  return args;
}

absl::StatusOr<CgroupPlan> PlanCgroups(const CgroupHost& host, CgroupVersion version,
                                       const CgroupLimits& limits, const std::string& parent) {
  RETURN_IF_ERROR(CheckParent(parent));
  std::set<std::string> need;
  if (limits.memory_bytes != 0) need.insert("memory");
  if (limits.cpu_quota_us != 0) {
    if (limits.cpu_quota_us < 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("cpu quota ", limits.cpu_quota_us, " us: the kernel's minimum is 1000 us"));
    }
    if (limits.cpu_period_us < 1000 || limits.cpu_period_us > 1000000) {
      return absl::InvalidArgumentError(
          absl::StrCat("cpu period ", limits.cpu_period_us, " us: must be 1000..1000000 us"));
    }
    need.insert("cpu");
  }
  if (limits.cpu_weight != 0) {
    if (limits.cpu_weight > 10000) {
      return absl::InvalidArgumentError(absl::StrCat("cpu weight ", limits.cpu_weight, ": must be 1..10000"));
    }
    need.insert("cpu");
  }
  if (limits.pids_max != 0) need.insert("pids");
  for (const auto& [file, value] : limits.extra) {
    RETURN_IF_ERROR(CheckExtra(file, value));
    need.insert(ControllerOf(file));
  }

  CgroupPlan plan;
  plan.parent = parent;
  plan.controllers = need;
  if (version == CgroupVersion::kAuto) {
    if (!host.v2_mount.empty() && Missing(need, host.v2_controllers).empty()) {
      plan.version = CgroupVersion::kV2;
    } else if (Missing(need, host.Controllers(CgroupVersion::kV1)).empty() && !host.v1_mounts.empty()) {
      plan.version = CgroupVersion::kV1;
    } else if (need.empty()) {
      plan.version = host.v2_mount.empty() ? CgroupVersion::kV1 : CgroupVersion::kV2;
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          MissingMessage(host, CgroupVersion::kV2, Missing(need, host.v2_controllers)), "; ",
          MissingMessage(host, CgroupVersion::kV1, Missing(need, host.Controllers(CgroupVersion::kV1)))));
    }
  } else {
    plan.version = version;
    std::set<std::string> missing = Missing(need, host.Controllers(version));
    if (!missing.empty()) return absl::FailedPreconditionError(MissingMessage(host, version, missing));
  }

  const bool v2 = plan.version == CgroupVersion::kV2;
  if (limits.memory_bytes != 0) {
    uint64_t bytes = (limits.memory_bytes + kPage - 1) / kPage * kPage;
    plan.settings.emplace_back(v2 ? "memory.max" : "memory.limit_in_bytes", absl::StrCat(bytes));
  }
  if (limits.cpu_quota_us != 0) {
    if (v2) {
      plan.settings.emplace_back("cpu.max", absl::StrCat(limits.cpu_quota_us, " ", limits.cpu_period_us));
    } else {
      // Period first: the kernel checks each write against the other value.
      plan.settings.emplace_back("cpu.cfs_period_us", absl::StrCat(limits.cpu_period_us));
      plan.settings.emplace_back("cpu.cfs_quota_us", absl::StrCat(limits.cpu_quota_us));
    }
  }
  if (limits.cpu_weight != 0) {
    if (v2) {
      plan.settings.emplace_back("cpu.weight", absl::StrCat(limits.cpu_weight));
    } else {
      uint64_t shares = std::max<uint64_t>(2, uint64_t{limits.cpu_weight} * 1024 / 100);
      plan.settings.emplace_back("cpu.shares", absl::StrCat(shares));
    }
  }
  if (limits.pids_max != 0) plan.settings.emplace_back("pids.max", absl::StrCat(limits.pids_max));
  for (const auto& kv : limits.extra) plan.settings.push_back(kv);
  return plan;
}

std::vector<std::string> VmCgroupDirs(const CgroupHost& host, const CgroupPlan& plan, const std::string& id) {
  std::vector<std::string> dirs;
  if (plan.version == CgroupVersion::kV2) {
    if (!plan.settings.empty()) dirs.push_back(absl::StrCat(host.v2_mount, "/", plan.parent, "/", id));
    return dirs;
  }
  for (const std::string& c : plan.controllers) {
    auto it = host.v1_mounts.find(c);
    if (it == host.v1_mounts.end()) continue;
    std::string dir = absl::StrCat(it->second, "/", plan.parent, "/", id);
    if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
  }
  return dirs;
}

namespace {

std::string SettingDir(const CgroupHost& host, const CgroupPlan& plan, const std::string& id,
                       const std::string& file) {
  if (plan.version == CgroupVersion::kV2) return absl::StrCat(host.v2_mount, "/", plan.parent, "/", id);
  auto it = host.v1_mounts.find(ControllerOf(file));
  return it == host.v1_mounts.end() ? std::string() : absl::StrCat(it->second, "/", plan.parent, "/", id);
}

}  // namespace

absl::Status WriteVmCgroupSettings(const CgroupHost& host, const CgroupPlan& plan, const std::string& id) {
  for (const auto& [file, value] : plan.settings) {
    std::string dir = SettingDir(host, plan, id, file);
    struct stat st;
    if (dir.empty() || stat(dir.c_str(), &st) < 0) {
      return absl::NotFoundError(absl::StrCat("cgroup of ", id, " for ", file, ": no directory ", dir));
    }
    std::string path = absl::StrCat(dir, "/", file);
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    if (!fd) return ErrnoError(absl::StrCat("open ", path));
    std::string line = absl::StrCat(value, "\n");
    if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      return ErrnoError(absl::StrCat("write ", path, " = ", value));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CgroupLimits> ReadVmCgroupLimits(const CgroupHost& host, const CgroupPlan& plan,
                                                const std::string& id) {
  auto dir_of = [&](const std::string& file) { return SettingDir(host, plan, id, file); };
  CgroupLimits out;
  for (const auto& [file, value] : plan.settings) {
    std::string path = absl::StrCat(dir_of(file), "/", file);
    absl::StatusOr<std::string> text = ReadCgroupFile(path);
    if (!text.ok()) return Annotate(text.status(), absl::StrCat("cgroup of ", id));
    if (file == "memory.max" || file == "memory.limit_in_bytes") {
      ASSIGN_OR_RETURN(out.memory_bytes, ParseLimit(path, *text));
    } else if (file == "pids.max") {
      ASSIGN_OR_RETURN(out.pids_max, ParseLimit(path, *text));
    } else if (file == "cpu.cfs_quota_us") {
      ASSIGN_OR_RETURN(out.cpu_quota_us, ParseLimit(path, *text));
    } else if (file == "cpu.cfs_period_us") {
      ASSIGN_OR_RETURN(out.cpu_period_us, ParseLimit(path, *text));
    } else if (file == "cpu.max") {
      std::vector<std::string> parts = absl::StrSplit(*text, ' ', absl::SkipEmpty());
      if (parts.size() != 2)
        return absl::DataLossError(absl::StrCat("cgroup file ", path, ": \"", *text, "\""));
      ASSIGN_OR_RETURN(out.cpu_quota_us, ParseLimit(path, parts[0]));
      ASSIGN_OR_RETURN(out.cpu_period_us, ParseLimit(path, parts[1]));
    } else if (file == "cpu.weight") {
      ASSIGN_OR_RETURN(uint64_t w, ParseLimit(path, *text));
      out.cpu_weight = static_cast<uint32_t>(w);
    } else if (file == "cpu.shares") {
      ASSIGN_OR_RETURN(uint64_t shares, ParseLimit(path, *text));
      out.cpu_weight = static_cast<uint32_t>((shares * 100 + 512) / 1024);
    } else {
      out.extra.emplace_back(file, *text);
    }
  }
  return out;
}

absl::Status RemoveVmCgroups(const CgroupHost& host, const std::string& parent, const std::string& id) {
  RETURN_IF_ERROR(CheckParent(parent));
  if (id.empty() || absl::StrContains(id, '/') || id == "." || id == "..") {
    return absl::InvalidArgumentError(absl::StrCat("cgroup of VM \"", id, "\": bad id"));
  }
  std::set<std::string> dirs;
  for (const auto& [c, mount] : host.v1_mounts) dirs.insert(absl::StrCat(mount, "/", parent, "/", id));
  if (!host.v2_mount.empty()) dirs.insert(absl::StrCat(host.v2_mount, "/", parent, "/", id));
  for (const std::string& dir : dirs) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) continue;
    if (errno == EBUSY || errno == ENOTEMPTY) {
      return absl::FailedPreconditionError(
          absl::StrCat("remove cgroup ", dir, ": still holds a process or a child cgroup"));
    }
    return ErrnoError(absl::StrCat("remove cgroup ", dir));
  }
  return absl::OkStatus();
}

}  // namespace fcvm::firecracker
