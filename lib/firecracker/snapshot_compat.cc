#include "lib/firecracker/snapshot_compat.h"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "nlohmann/json.hpp"

namespace fcvm::firecracker {
namespace {

using json = nlohmann::json;

constexpr uint64_t kVmstateMagicX86_64 = 0x0710198486640000ull;
// A format version string is short ("8.0.0"); anything longer is not a header.
constexpr uint64_t kMaxFormatChars = 64;

std::string FamilyModel(const CpuIdentity& c) {
  return absl::StrCat("family ", c.family, " model ", c.model);
}

}  // namespace

const std::vector<std::string>& CpuTemplateFlags() {
  // Instruction-set extensions a guest may use once it saw them in CPUID, and
  // the speculation-control features whose MSRs it may use: what Firecracker's
  // static templates (T2, T2S, C3, T2CL, T2A) mask or keep, in /proc/cpuinfo's
  // names ("pni" is SSE3).
  static const std::vector<std::string>* const kFlags = [] {
    auto* v =
        new std::vector<std::string>{"3dnowprefetch", "abm",          "adx",         "aes",
                                     "amx_bf16",      "amx_int8",     "amx_tile",    "arch_capabilities",
                                     "avx",           "avx2",         "avx512_bf16", "avx512_bitalg",
                                     "avx512_fp16",   "avx512_vbmi2", "avx512_vnni", "avx512_vpopcntdq",
                                     "avx512bw",      "avx512cd",     "avx512dq",    "avx512f",
                                     "avx512ifma",    "avx512vbmi",   "avx512vl",    "avx_vnni",
                                     "bmi1",          "bmi2",         "clflushopt",  "clwb",
                                     "clzero",        "cx16",         "erms",        "f16c",
                                     "fma",           "fma4",         "fsgsbase",    "fsrm",
                                     "gfni",          "ibpb",         "ibrs",        "invpcid",
                                     "la57",          "lahf_lm",      "lm",          "md_clear",
                                     "misalignsse",   "movbe",        "mpx",         "nx",
                                     "pclmulqdq",     "pdpe1gb",      "pku",         "pni",
                                     "popcnt",        "rdpid",        "rdrand",      "rdseed",
                                     "rdtscp",        "rtm",          "serialize",   "sha_ni",
                                     "smap",          "smep",         "spec_ctrl",   "ssbd",
                                     "sse4_1",        "sse4_2",       "sse4a",       "ssse3",
                                     "stibp",         "tbm",          "tsc_adjust",  "umip",
                                     "vaes",          "vpclmulqdq",   "wbnoinvd",    "xop",
                                     "xsave",         "xsavec",       "xsaveopt",    "xsaves",
                                     "xgetbv1"};
    std::sort(v->begin(), v->end());
    return v;
  }();
  return *kFlags;
}

absl::StatusOr<CpuIdentity> ParseCpuInfo(absl::string_view cpuinfo) {
  CpuIdentity cpu;
  bool seen_processor = false;
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view key = absl::StripAsciiWhitespace(line.substr(0, colon));
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (key == "processor") {
      if (seen_processor) break;  // the first processor only
      seen_processor = true;
    } else if (key == "vendor_id") {
      cpu.vendor = std::string(value);
    } else if (key == "cpu family") {
      (void)absl::SimpleAtoi(value, &cpu.family);
    } else if (key == "model") {
      (void)absl::SimpleAtoi(value, &cpu.model);
    } else if (key == "stepping") {
      (void)absl::SimpleAtoi(value, &cpu.stepping);
    } else if (key == "model name") {
      cpu.model_name = std::string(value);
    } else if (key == "flags") {
      std::set<std::string> have;
      for (absl::string_view f : absl::StrSplit(value, ' ', absl::SkipEmpty())) have.emplace(f);
      for (const std::string& f : CpuTemplateFlags()) {
        if (have.count(f) > 0) cpu.flags.push_back(f);
      }
    }
  }
  if (cpu.vendor.empty()) return absl::InvalidArgumentError("cpuinfo: no vendor_id");
  return cpu;
}

absl::StatusOr<SnapshotHost> ProbeHost() {
  SnapshotHost host;
  ASSIGN_OR_RETURN(std::string cpuinfo, ReadFile("/proc/cpuinfo"));
  absl::StatusOr<CpuIdentity> cpu = ParseCpuInfo(cpuinfo);
  if (!cpu.ok()) return Annotate(cpu.status(), "/proc/cpuinfo");
  host.cpu = *std::move(cpu);
  struct utsname u;
  if (uname(&u) == 0) host.kernel_release = u.release;
  host.page_size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return host;
}

absl::StatusOr<Version> ParseVmstateFormat(absl::string_view head) {
  if (head.size() < 16) return absl::InvalidArgumentError("vmstate header: too short");
  uint64_t magic = 0, len = 0;
  std::memcpy(&magic, head.data(), 8);
  std::memcpy(&len, head.data() + 8, 8);
  if (magic != kVmstateMagicX86_64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vmstate header: magic 0x", absl::Hex(magic, absl::kZeroPad16), " is not x86_64 Firecracker's"));
  }
  if (len == 0 || len > kMaxFormatChars || head.size() < 16 + len) {
    return absl::InvalidArgumentError(absl::StrCat("vmstate header: bad format version length ", len));
  }
  absl::StatusOr<Version> v = ParseVersion(head.substr(16, len));
  if (!v.ok()) return Annotate(v.status(), "vmstate header");
  return *v;
}

absl::StatusOr<Version> ReadVmstateFormat(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  char buf[16 + kMaxFormatChars];
  ssize_t n = ::pread(fd.get(), buf, sizeof(buf), 0);
  if (n < 0) return ErrnoError(absl::StrCat("read ", path));
  absl::StatusOr<Version> v = ParseVmstateFormat(absl::string_view(buf, static_cast<size_t>(n)));
  if (!v.ok()) return Annotate(v.status(), path);
  return *v;
}

bool FormatLoadable(const Version& snapshot, const Version& firecracker) {
  return snapshot.major == firecracker.major && snapshot.minor <= firecracker.minor;
}

std::string SnapshotHostToJson(const SnapshotHost& h) {
  json j;
  j["firecracker_version"] = h.firecracker_version;
  j["snapshot_format"] = h.snapshot_format;
  j["cpu"] = {{"vendor", h.cpu.vendor},     {"family", h.cpu.family},         {"model", h.cpu.model},
              {"stepping", h.cpu.stepping}, {"model_name", h.cpu.model_name}, {"flags", h.cpu.flags}};
  j["cpu_template"] = h.cpu_template;
  j["kernel_release"] = h.kernel_release;
  j["page_size"] = h.page_size;
  return j.dump();
}

absl::StatusOr<SnapshotHost> SnapshotHostFromJson(absl::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError("snapshot host: not a JSON object");
  SnapshotHost h;
  auto str = [](const json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto num = [](const json& o, const char* key) -> int64_t {
    auto it = o.find(key);
    return it != o.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
  };
  h.firecracker_version = str(j, "firecracker_version");
  h.snapshot_format = str(j, "snapshot_format");
  h.cpu_template = str(j, "cpu_template");
  h.kernel_release = str(j, "kernel_release");
  h.page_size = static_cast<uint64_t>(std::max<int64_t>(0, num(j, "page_size")));
  auto cpu = j.find("cpu");
  if (cpu != j.end() && cpu->is_object()) {
    h.cpu.vendor = str(*cpu, "vendor");
    h.cpu.family = static_cast<int>(num(*cpu, "family"));
    h.cpu.model = static_cast<int>(num(*cpu, "model"));
    h.cpu.stepping = static_cast<int>(num(*cpu, "stepping"));
    h.cpu.model_name = str(*cpu, "model_name");
    auto flags = cpu->find("flags");
    if (flags != cpu->end() && flags->is_array()) {
      for (const json& f : *flags) {
        if (f.is_string()) h.cpu.flags.push_back(f.get<std::string>());
      }
    }
  }
  return h;
}

absl::Status CheckSnapshotHost(const SnapshotHost& made, const SnapshotHost& here) {
  std::vector<std::string> diffs;
  if (!made.firecracker_version.empty() && !here.firecracker_version.empty()) {
    absl::StatusOr<Version> a = ParseVersion(made.firecracker_version);
    absl::StatusOr<Version> b = ParseVersion(here.firecracker_version);
    if (!a.ok()) {
      diffs.push_back(
          absl::StrCat("Firecracker version: snapshot \"", made.firecracker_version, "\" is not a version"));
    } else if (b.ok() && (a->major != b->major || a->minor != b->minor)) {
      diffs.push_back(absl::StrCat("Firecracker version: snapshot ", a->ToString(), ", this host ",
                                   b->ToString(),
                                   " (snapshots are only good for the minor release that made them)"));
    }
  }
  if (!made.snapshot_format.empty() && !here.snapshot_format.empty()) {
    absl::StatusOr<Version> a = ParseVersion(made.snapshot_format);
    absl::StatusOr<Version> b = ParseVersion(here.snapshot_format);
    if (!a.ok()) {
      diffs.push_back(absl::StrCat("snapshot format: \"", made.snapshot_format, "\" is not a version"));
    } else if (b.ok() && !FormatLoadable(*a, *b)) {
      diffs.push_back(absl::StrCat("snapshot format: snapshot ", a->ToString(), ", this host's Firecracker ",
                                   b->ToString(), " (it loads formats ", b->major, ".x with x <= ", b->minor,
                                   ")"));
    }
  }
  const CpuIdentity& mc = made.cpu;
  const CpuIdentity& hc = here.cpu;
  if (!mc.vendor.empty() && !hc.vendor.empty()) {
    if (mc.vendor != hc.vendor) {
      diffs.push_back(absl::StrCat("CPU vendor: snapshot ", mc.vendor, ", this host ", hc.vendor));
    } else if (mc.family != hc.family || mc.model != hc.model) {
      diffs.push_back(absl::StrCat("CPU: snapshot ", FamilyModel(mc), " (", mc.model_name, "), this host ",
                                   FamilyModel(hc), " (", hc.model_name, ")"));
    }
    std::set<std::string> have(hc.flags.begin(), hc.flags.end());
    std::vector<std::string> missing;
    for (const std::string& f : mc.flags) {
      if (have.count(f) == 0) missing.push_back(f);
    }
    if (!missing.empty()) {
      diffs.push_back(absl::StrCat("CPU features the snapshot's guest saw and this host lacks: ",
                                   absl::StrJoin(missing, " ")));
    }
  }
  if (made.cpu_template != here.cpu_template) {
    diffs.push_back(absl::StrCat("CPU template: snapshot ",
                                 made.cpu_template.empty() ? "none" : made.cpu_template, ", this host ",
                                 here.cpu_template.empty() ? "none" : here.cpu_template));
  }
  if (made.page_size != 0 && here.page_size != 0 && made.page_size != here.page_size) {
    diffs.push_back(absl::StrCat("page size: snapshot ", made.page_size, ", this host ", here.page_size));
  }
  if (diffs.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrJoin(diffs, "; "));
}

}  // namespace fcvm::firecracker
