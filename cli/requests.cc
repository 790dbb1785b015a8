#include "cli/requests.h"

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"

namespace fcvm::cli {
namespace {

template <typename Enum>
struct EnumName {
  const char* name;
  Enum value;
};

template <typename Enum, size_t N>
absl::StatusOr<Enum> LookUp(const EnumName<Enum> (&table)[N], absl::string_view name,
                            absl::string_view what) {
  const std::string lower = absl::AsciiStrToLower(name);
  std::vector<std::string> names;
  for (const EnumName<Enum>& e : table) {
    if (lower == e.name) return e.value;
    names.push_back(e.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown ", what, " '", name, "' (want ",
                                                 absl::StrJoin(names.begin(), names.end() - 1, ", "),
                                                 names.size() > 1 ? " or " : "", names.back(), ")"));
}

// Prefixes `flag` to an error: "--backend: unknown ...".
absl::Status ForFlag(const absl::Status& status, absl::string_view flag) { return Annotate(status, flag); }

// Checks the number of positional arguments. `names` are their placeholders
// as in the usage line; `optional` of them (the last ones) may be missing.
absl::Status CheckPositional(const Args& positional, const std::vector<std::string>& names, size_t optional,
                             absl::string_view usage) {
  const size_t required = names.size() - optional;
  if (positional.size() < required) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing ", names[positional.size()], " (usage: fcvmctl ", usage, ")"));
  }
  if (positional.size() > names.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument '", positional[names.size()], "' (usage: fcvmctl ", usage, ")"));
  }
  return absl::OkStatus();
}

// Parses the arguments; Ok with help_requested() set means: stop, print help.
absl::StatusOr<Args> ParseFlags(FlagParser& flags, const Args& args) { return flags.Parse(args); }

// A range check for an --int option that ends up in a uint32 field.
absl::StatusOr<uint32_t> InRange(int64_t value, int64_t lo, int64_t hi, absl::string_view flag) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", value, " is out of range (",
                     hi == UINT32_MAX ? absl::StrCat("at least ", lo) : absl::StrCat(lo, "-", hi), ")"));
  }
  return static_cast<uint32_t>(value);
}

// Parses a single-ref command ("get REF", "pause REF", ...).
absl::StatusOr<std::string> ParseRef(FlagParser& flags, const Args& args, absl::string_view usage,
                                     std::string placeholder = "REF") {
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  if (flags.help_requested()) return std::string();
  RETURN_IF_ERROR(CheckPositional(positional, {std::move(placeholder)}, 0, usage));
  return positional[0];
}

// The metadata of --metadata: a file's contents, or stdin's for "-". Sent
// as given (fcvmd checks that it is a JSON object).
absl::StatusOr<std::string> ReadMetadata(const std::string& path, absl::string_view flag) {
  absl::StatusOr<std::string> text = ReadFile(path == "-" ? "/dev/stdin" : path);
  if (!text.ok()) return Annotate(text.status(), absl::StrCat(flag, " ", path == "-" ? "stdin" : path));
  return text;
}

template <typename Map>
void SetLabels(const std::map<std::string, std::string>& labels, Map* out) {
  for (const auto& [k, v] : labels) (*out)[k] = v;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseLabels(const std::vector<std::string>& specs,
                                                               absl::string_view flag) {
  std::map<std::string, std::string> labels;
  for (const std::string& spec : specs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": '", spec, "' is not KEY=VALUE"));
    }
    std::string key = spec.substr(0, eq);
    if (key.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty key in '", spec, "'"));
    if (labels.count(key) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": key '", key, "' given twice"));
    }
    labels.emplace(std::move(key), spec.substr(eq + 1));
  }
  return labels;
}

absl::StatusOr<fcvm::v1::Drive> ParseDrive(absl::string_view spec) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("'", spec, "': ", why, " (want ID=PATH[,ro][,root])"));
  };
  const size_t eq = spec.find('=');
  if (eq == absl::string_view::npos) return bad("no '='");
  const absl::string_view id = spec.substr(0, eq);
  if (id.empty()) return bad("empty drive id");
  if (id.size() > 64) return bad("drive id longer than 64 characters");
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
      return bad(absl::StrCat("drive id '", id, "' may hold only letters, digits, '_' and '-'"));
    }
  }
  std::vector<absl::string_view> parts = absl::StrSplit(spec.substr(eq + 1), ',');
  if (parts[0].empty()) return bad("empty path");
  fcvm::v1::Drive drive;
  drive.set_drive_id(std::string(id));
  drive.set_path(AbsolutePath(std::string(parts[0])));
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i] == "ro") {
      drive.set_read_only(true);
    } else if (parts[i] == "root") {
      drive.set_is_root_device(true);
    } else {
      return bad(absl::StrCat("unknown drive option '", parts[i], "'"));
    }
  }
  return drive;
}

absl::StatusOr<fcvm::v1::VmState> ParseVmState(absl::string_view name) {
  static constexpr EnumName<fcvm::v1::VmState> kStates[] = {
      {"creating", fcvm::v1::VM_STATE_CREATING}, {"running", fcvm::v1::VM_STATE_RUNNING},
      {"paused", fcvm::v1::VM_STATE_PAUSED},     {"stopping", fcvm::v1::VM_STATE_STOPPING},
      {"stopped", fcvm::v1::VM_STATE_STOPPED},   {"failed", fcvm::v1::VM_STATE_FAILED},
  };
  return LookUp(kStates, name, "VM state");
}

absl::StatusOr<fcvm::v1::MemoryBackend> ParseMemoryBackend(absl::string_view name) {
  static constexpr EnumName<fcvm::v1::MemoryBackend> kBackends[] = {
      {"uffd", fcvm::v1::MEMORY_BACKEND_UFFD},
      {"file", fcvm::v1::MEMORY_BACKEND_FILE},
  };
  return LookUp(kBackends, name, "memory backend");
}

absl::StatusOr<fcvm::v1::HugePages> ParseHugePages(absl::string_view name) {
  static constexpr EnumName<fcvm::v1::HugePages> kSizes[] = {
      {"none", fcvm::v1::HUGE_PAGES_NONE},
      {"2m", fcvm::v1::HUGE_PAGES_2M},
  };
  return LookUp(kSizes, name, "huge page size");
}

absl::StatusOr<fcvm::v1::PrefetchPolicy> ParsePrefetchPolicy(absl::string_view name) {
  static constexpr EnumName<fcvm::v1::PrefetchPolicy> kPolicies[] = {
      {"auto", fcvm::v1::PREFETCH_POLICY_AUTO},
      {"none", fcvm::v1::PREFETCH_POLICY_NONE},
      {"record", fcvm::v1::PREFETCH_POLICY_RECORD},
      {"prefetch", fcvm::v1::PREFETCH_POLICY_PREFETCH},
  };
  return LookUp(kPolicies, name, "prefetch policy");
}

absl::StatusOr<fcvm::v1::AfterSnapshot> ParseAfterSnapshot(absl::string_view name) {
  static constexpr EnumName<fcvm::v1::AfterSnapshot> kAfter[] = {
      {"resume", fcvm::v1::AFTER_SNAPSHOT_RESUME},
      {"pause", fcvm::v1::AFTER_SNAPSHOT_STAY_PAUSED},
      {"stop", fcvm::v1::AFTER_SNAPSHOT_STOP},
  };
  return LookUp(kAfter, name, "action");
}

std::string AbsolutePath(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  std::string cwd(4096, '\0');
  if (getcwd(cwd.data(), cwd.size()) == nullptr) return path;  // fcvmd reports what it cannot find
  cwd.resize(cwd.find('\0'));
  absl::string_view rel = path;
  while (rel.substr(0, 2) == "./") rel.remove_prefix(2);
  return absl::StrCat(cwd, cwd.back() == '/' ? "" : "/", rel);
}

absl::StatusOr<fcvm::v1::PortMapping> ParsePublish(absl::string_view spec) {
  // HOST:GUEST[/tcp|/udp]
  std::string s(spec);
  fcvm::v1::PortMapping p;
  p.set_protocol("tcp");
  if (size_t slash = s.find('/'); slash != std::string::npos) {
    p.set_protocol(s.substr(slash + 1));
    s = s.substr(0, slash);
    if (p.protocol() != "tcp" && p.protocol() != "udp") {
      return absl::InvalidArgumentError(absl::StrCat("'", spec, "': protocol must be tcp or udp"));
    }
  }
  size_t colon = s.find(':');
  uint32_t host = 0, guest = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(s.substr(0, colon), &host) ||
      !absl::SimpleAtoi(s.substr(colon + 1), &guest) || host == 0 || guest == 0 || host > 65535 ||
      guest > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", spec, "' is not HOST_PORT:GUEST_PORT[/tcp|/udp]"));
  }
  p.set_host_port(host);
  p.set_guest_port(guest);
  return p;
}

// --memory-limit-mib, --cpu-percent, --cpu-weight, --pids-max: the cgroup
// limits of a jailed VM (0 = fcvmd's default).
struct LimitFlags {
  int64_t memory_mib = 0, cpu_percent = 0, cpu_weight = 0, pids_max = 0;
  void Register(FlagParser& flags) {
    flags.Int("memory-limit-mib", &memory_mib,
              "memory limit of the VM's cgroup: guest memory + Firecracker's own (default: guest + 32)");
    flags.Int("cpu-percent", &cpu_percent, "CPU limit in percent of one CPU (default: 100 per vCPU)");
    flags.Int("cpu-weight", &cpu_weight, "CPU weight 1-10000 under contention (default: the host's, 100)");
    flags.Int("pids-max", &pids_max,
              "tasks the VM may have (default: what Firecracker needs, with a margin)");
  }
  bool set() const { return memory_mib != 0 || cpu_percent != 0 || cpu_weight != 0 || pids_max != 0; }
  absl::Status Fill(fcvm::v1::ResourceLimits* out) const {
    ASSIGN_OR_RETURN(uint32_t mem, InRange(memory_mib, 0, UINT32_MAX, "--memory-limit-mib"));
    ASSIGN_OR_RETURN(uint32_t cpu, InRange(cpu_percent, 0, UINT32_MAX, "--cpu-percent"));
    ASSIGN_OR_RETURN(uint32_t weight, InRange(cpu_weight, 0, 10000, "--cpu-weight"));
    ASSIGN_OR_RETURN(uint32_t pids, InRange(pids_max, 0, UINT32_MAX, "--pids-max"));
    out->set_memory_mib(mem);
    out->set_cpu_percent(cpu);
    out->set_cpu_weight(weight);
    out->set_pids_max(pids);
    return absl::OkStatus();
  }
};

absl::StatusOr<fcvm::v1::RunVmRequest> ParseRunVm(FlagParser& flags, const Args& args) {
  std::string kernel, initrd, boot_args, name, huge_pages = "none";
  int64_t vcpus = 1, memory_mib = 128;
  std::vector<std::string> drives, labels;
  bool net = false;
  std::string mac;
  std::vector<std::string> publish;
  flags.String("kernel", &kernel, "uncompressed ELF kernel (vmlinux); required", "PATH");
  flags.String("initrd", &initrd, "initrd image", "PATH");
  flags.String("boot-args", &boot_args, "kernel command line (default: fcvmd's)", "ARGS");
  flags.Int("vcpus", &vcpus, "vCPUs, 1-32 (default 1)");
  flags.Int("memory-mib", &memory_mib, "guest memory in MiB, >= 16 (default 128)");
  flags.String("huge-pages", &huge_pages,
               "guest memory page size: none (4 KiB, default) or 2M (from the host's huge page pool; "
               "clones of its snapshots use the page server)",
               "none|2M");
  flags.List("drive", &drives, "attach a block device; repeatable", "ID=PATH[,ro][,root]");
  flags.String("name", &name, "VM name (default: generated)", "NAME");
  flags.List("label", &labels, "label the VM; repeatable", "KEY=VALUE");
  flags.Bool("net", &net, "give the VM a network: its own namespace, tap, unique address and NAT");
  flags.String("mac", &mac, "guest MAC address (with --net)", "MAC");
  flags.List("publish", &publish, "publish a guest port on the host (with --net); repeatable",
             "HOST:GUEST[/udp]");
  std::string metadata, mmds_version;
  bool vsock = false;
  int64_t vsock_cid = 0;
  flags.Bool("vsock", &vsock, "add a virtio-vsock device (every clone gets its own host socket)");
  flags.Int("vsock-cid", &vsock_cid, "the guest's vsock CID, >= 3 (default 3; with --vsock)");
  flags.String("metadata", &metadata, "the VM's metadata (MMDS): a JSON object from a file, or '-' for stdin",
               "FILE");
  flags.String("mmds-version", &mmds_version,
               "MMDS version the guest speaks: V2 (session tokens, default) or V1", "V1|V2");
  LimitFlags limits;
  limits.Register(flags);
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::RunVmRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {}, 0, "run --kernel PATH [options]"));
  if (kernel.empty()) return absl::InvalidArgumentError("--kernel is required");
  fcvm::v1::VmConfig* config = req.mutable_config();
  config->set_kernel_path(AbsolutePath(kernel));
  config->set_initrd_path(AbsolutePath(initrd));
  config->set_boot_args(boot_args);
  ASSIGN_OR_RETURN(uint32_t vcpu_count, InRange(vcpus, 1, 32, "--vcpus"));
  config->set_vcpu_count(vcpu_count);
  ASSIGN_OR_RETURN(uint32_t mib, InRange(memory_mib, 16, UINT32_MAX, "--memory-mib"));
  config->set_memory_mib(mib);
  absl::StatusOr<fcvm::v1::HugePages> huge = ParseHugePages(huge_pages);
  if (!huge.ok()) return ForFlag(huge.status(), "--huge-pages");
  config->set_huge_pages(*huge);
  std::set<std::string> drive_ids;
  bool have_root = false;
  for (const std::string& spec : drives) {
    absl::StatusOr<fcvm::v1::Drive> drive = ParseDrive(spec);
    if (!drive.ok()) return ForFlag(drive.status(), "--drive");
    if (!drive_ids.insert(drive->drive_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--drive: drive id '", drive->drive_id(), "' given twice"));
    }
    if (drive->is_root_device()) {
      if (have_root) return absl::InvalidArgumentError("--drive: more than one drive marked root");
      have_root = true;
    }
    *config->add_drives() = *std::move(drive);
  }
  config->mutable_network()->set_enabled(net);
  if (!net && (!mac.empty() || !publish.empty())) {
    return absl::InvalidArgumentError("--mac and --publish need --net");
  }
  config->mutable_network()->set_guest_mac(mac);
  for (const std::string& spec : publish) {
    absl::StatusOr<fcvm::v1::PortMapping> p = ParsePublish(spec);
    if (!p.ok()) return ForFlag(p.status(), "--publish");
    *config->mutable_network()->add_publish() = *p;
  }
  req.set_name(name);
  ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
  SetLabels(label_map, req.mutable_labels());
  if (!metadata.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadMetadata(metadata, "--metadata"));
    req.set_metadata_json(std::move(text));
  }
  if (!mmds_version.empty()) {
    std::string v = absl::AsciiStrToUpper(mmds_version);
    if (v != "V1" && v != "V2") return absl::InvalidArgumentError("--mmds-version: want V1 or V2");
    config->set_mmds_version(v);
  }
  if (vsock_cid != 0 && !vsock) return absl::InvalidArgumentError("--vsock-cid needs --vsock");
  if (vsock) {
    config->mutable_vsock()->set_enabled(true);
    ASSIGN_OR_RETURN(uint32_t cid, InRange(vsock_cid, 0, UINT32_MAX - 1, "--vsock-cid"));
    config->mutable_vsock()->set_guest_cid(cid);
  }
  if (limits.set()) RETURN_IF_ERROR(limits.Fill(config->mutable_limits()));
  return req;
}

absl::StatusOr<fcvm::v1::GetVmRequest> ParseGetVm(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "get REF"));
  fcvm::v1::GetVmRequest req;
  req.set_ref(ref);
  return req;
}

absl::StatusOr<fcvm::v1::ListVmsRequest> ParseListVms(FlagParser& flags, const Args& args) {
  std::vector<std::string> labels, states;
  std::string snapshot;
  bool pss = false;
  flags.List("label", &labels, "only VMs with this label; repeatable (all must match)", "KEY=VALUE");
  flags.List("state", &states, "only VMs in this state; repeatable (any may match)", "STATE");
  flags.String("snapshot", &snapshot, "only clones of this snapshot (id or name)", "REF");
  flags.Bool("pss", &pss, "also each VM's PSS (costs fcvmd a page-table walk per VM)");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::ListVmsRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(
      CheckPositional(positional, {}, 0, "ls [--label K=V]... [--state S]... [--snapshot REF] [--pss]"));
  if (pss) req.set_usage(fcvm::v1::USAGE_DETAIL_FULL);
  ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
  SetLabels(label_map, req.mutable_label_selector());
  for (const std::string& s : states) {
    absl::StatusOr<fcvm::v1::VmState> state = ParseVmState(s);
    if (!state.ok()) return ForFlag(state.status(), "--state");
    req.add_states(*state);
  }
  req.set_snapshot_ref(snapshot);
  return req;
}

absl::StatusOr<TopOptions> ParseTop(FlagParser& flags, const Args& args) {
  std::vector<std::string> labels;
  std::string snapshot;
  std::string sort = "cpu";
  std::string interval = "2s";
  int64_t iterations = 0;
  bool pss = false;
  flags.String("interval", &interval,
               "time between refreshes, and between the two samples of --json (default 2s)", "DURATION");
  flags.String("sort", &sort, "cpu (default), rss, pss, faults, uptime or name", "KEY");
  flags.Bool("pss", &pss, "also each VM's PSS (costs fcvmd a page-table walk per VM)");
  flags.Int("iterations", &iterations, "refreshes before exiting (default 0: until Ctrl-C)");
  flags.List("label", &labels, "only VMs with this label; repeatable (all must match)", "KEY=VALUE");
  flags.String("snapshot", &snapshot, "only clones of this snapshot (id or name)", "REF");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  TopOptions top;
  if (flags.help_requested()) return top;
  RETURN_IF_ERROR(CheckPositional(positional, {}, 0, "top [options]"));
  if (!absl::ParseDuration(interval, &top.interval) || top.interval < absl::Milliseconds(100) ||
      top.interval > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--interval: want a duration from 100ms to 1h (e.g. 1s, 500ms), got '", interval, "'"));
  }
  absl::StatusOr<TopSort> s = ParseTopSort(sort);
  if (!s.ok()) return ForFlag(s.status(), "--sort");
  top.sort = *s;
  if (iterations < 0) return absl::InvalidArgumentError("--iterations: must be 0 or more");
  top.iterations = iterations;
  if (top.sort == TopSort::kPss) pss = true;
  ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
  SetLabels(label_map, top.list.mutable_label_selector());
  top.list.set_snapshot_ref(snapshot);
  top.list.set_usage(pss ? fcvm::v1::USAGE_DETAIL_FULL : fcvm::v1::USAGE_DETAIL_BASIC);
  return top;
}

absl::StatusOr<fcvm::v1::PauseVmRequest> ParsePauseVm(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "pause REF"));
  fcvm::v1::PauseVmRequest req;
  req.set_ref(ref);
  return req;
}

absl::StatusOr<fcvm::v1::ResumeVmRequest> ParseResumeVm(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "resume REF"));
  fcvm::v1::ResumeVmRequest req;
  req.set_ref(ref);
  return req;
}

absl::StatusOr<std::vector<fcvm::v1::DeleteVmRequest>> ParseDeleteVms(FlagParser& flags, const Args& args) {
  bool force = false;
  std::string grace;
  flags.Bool("force", &force, "SIGKILL at once instead of a graceful stop");
  flags.String("grace", &grace, "wait this long after SIGTERM before SIGKILL (default: fcvmd's, 5s)",
               "DURATION");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  std::vector<fcvm::v1::DeleteVmRequest> reqs;
  if (flags.help_requested()) return reqs;
  if (positional.empty())
    return absl::InvalidArgumentError("missing REF (usage: fcvmctl rm REF... [options])");
  absl::Duration grace_period;
  if (!grace.empty()) {
    if (!absl::ParseDuration(grace, &grace_period) || grace_period < absl::ZeroDuration() ||
        grace_period == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--grace: not a duration: '", grace, "' (e.g. 500ms, 5s, 2m)"));
    }
    if (force) return absl::InvalidArgumentError("--grace makes no sense with --force");
  }
  std::set<std::string> seen;
  for (const std::string& ref : positional) {
    if (!seen.insert(ref).second) continue;  // "rm a a" deletes a once
    fcvm::v1::DeleteVmRequest& req = reqs.emplace_back();
    req.set_ref(ref);
    req.set_force(force);
    if (!grace.empty()) {
      *req.mutable_grace_period() =
          google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(grace_period));
    }
  }
  return reqs;
}

absl::StatusOr<fcvm::v1::CreateSnapshotRequest> ParseCreateSnapshot(FlagParser& flags, const Args& args) {
  std::string name, after = "resume";
  std::vector<std::string> labels;
  flags.String("name", &name, "snapshot name (default: generated)", "NAME");
  flags.List("label", &labels, "label the snapshot; repeatable", "KEY=VALUE");
  flags.String("after", &after, "what the VM does once written: resume (default), pause or stop", "ACTION");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::CreateSnapshotRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"VM_REF"}, 0, "snapshot create VM_REF [options]"));
  req.set_vm_ref(positional[0]);
  req.set_name(name);
  ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
  SetLabels(label_map, req.mutable_labels());
  absl::StatusOr<fcvm::v1::AfterSnapshot> a = ParseAfterSnapshot(after);
  if (!a.ok()) return ForFlag(a.status(), "--after");
  req.set_after(*a);
  return req;
}

absl::StatusOr<fcvm::v1::ListSnapshotsRequest> ParseListSnapshots(FlagParser& flags, const Args& args) {
  std::vector<std::string> labels;
  flags.List("label", &labels, "only snapshots with this label; repeatable (all must match)", "KEY=VALUE");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::ListSnapshotsRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {}, 0, "snapshot ls [--label K=V]..."));
  ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
  SetLabels(label_map, req.mutable_label_selector());
  return req;
}

absl::StatusOr<fcvm::v1::GetSnapshotRequest> ParseGetSnapshot(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "snapshot get REF"));
  fcvm::v1::GetSnapshotRequest req;
  req.set_ref(ref);
  return req;
}

absl::StatusOr<fcvm::v1::DeleteSnapshotRequest> ParseDeleteSnapshot(FlagParser& flags, const Args& args) {
  bool force = false;
  flags.Bool("force", &force, "stop the clones that depend on the snapshot first");
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "snapshot rm REF [--force]"));
  fcvm::v1::DeleteSnapshotRequest req;
  req.set_ref(ref);
  req.set_force(force);
  return req;
}

namespace {

// The flags clone and fork share: how many, names, labels, state, prefetch,
// parallelism, metadata and limits (`what`: "clone" or "fork").
struct BatchFlags {
  int64_t count = 1, parallelism = 0;
  std::string prefetch = "auto", name_prefix, metadata;
  std::vector<std::string> labels;
  bool stay_paused = false, all_or_nothing = false;
  LimitFlags limits;

  void Register(FlagParser& flags, const std::string& what, const std::string& default_prefix) {
    flags.Int("count", &count, absl::StrCat("how many ", what, "s, 1-1024 (default 1)"));
    flags.String("prefetch", &prefetch, "working set: auto (default), none, record or prefetch", "POLICY");
    flags.String("name-prefix", &name_prefix,
                 absl::StrCat(what, "s are named PREFIX-0, PREFIX-1, ... (default: ", default_prefix, ")"),
                 "PREFIX");
    flags.List("label", &labels, absl::StrCat("label every ", what, "; repeatable"), "KEY=VALUE");
    flags.Bool("stay-paused", &stay_paused, absl::StrCat("leave the ", what, "s paused"));
    flags.Bool("all-or-nothing", &all_or_nothing,
               absl::StrCat("if one ", what, " fails, delete the others and fail"));
    flags.Int("parallelism", &parallelism, absl::StrCat(what, "s restored at once (default: fcvmd's)"));
    flags.String("metadata", &metadata,
                 absl::StrCat("metadata (MMDS) for every ", what,
                              ", beside its own fcvm keys: a JSON object from a file, or '-' for stdin"),
                 "FILE");
    limits.Register(flags);
  }

  // Everything but the memory backend (clone checks prefetch against it).
  template <typename Request>
  absl::Status Fill(Request* req) const {
    ASSIGN_OR_RETURN(uint32_t n, InRange(count, 1, 1024, "--count"));
    req->set_count(n);
    absl::StatusOr<fcvm::v1::PrefetchPolicy> p = ParsePrefetchPolicy(prefetch);
    if (!p.ok()) return ForFlag(p.status(), "--prefetch");
    req->set_prefetch_policy(*p);
    req->set_name_prefix(name_prefix);
    ASSIGN_OR_RETURN(auto label_map, ParseLabels(labels, "--label"));
    SetLabels(label_map, req->mutable_labels());
    req->set_stay_paused(stay_paused);
    req->set_all_or_nothing(all_or_nothing);
    if (limits.set()) RETURN_IF_ERROR(limits.Fill(req->mutable_limits()));
    ASSIGN_OR_RETURN(uint32_t par, InRange(parallelism, 0, 1024, "--parallelism"));
    req->set_parallelism(par);
    if (!metadata.empty()) {
      ASSIGN_OR_RETURN(std::string text, ReadMetadata(metadata, "--metadata"));
      req->set_metadata_json(std::move(text));
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<fcvm::v1::CloneSnapshotRequest> ParseCloneSnapshot(FlagParser& flags, const Args& args) {
  BatchFlags batch;
  std::string backend = "uffd";
  std::vector<std::string> publish;
  batch.Register(flags, "clone", "the snapshot's name");
  flags.List("publish", &publish,
             "publish a guest port on the host (snapshots of --net VMs; one clone per host port); repeatable",
             "HOST:GUEST[/udp]");
  flags.String("backend", &backend, "guest memory: uffd (page server, default) or file (MAP_PRIVATE)",
               "BACKEND");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::CloneSnapshotRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"SNAPSHOT_REF"}, 0, "clone SNAPSHOT_REF [options]"));
  req.set_snapshot_ref(positional[0]);
  absl::StatusOr<fcvm::v1::MemoryBackend> b = ParseMemoryBackend(backend);
  if (!b.ok()) return ForFlag(b.status(), "--backend");
  req.set_memory_backend(*b);
  RETURN_IF_ERROR(batch.Fill(&req));
  if (*b == fcvm::v1::MEMORY_BACKEND_FILE && req.prefetch_policy() != fcvm::v1::PREFETCH_POLICY_AUTO &&
      req.prefetch_policy() != fcvm::v1::PREFETCH_POLICY_NONE) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--prefetch ", batch.prefetch, " needs --backend uffd (the page server records and prefetches)"));
  }
  for (const std::string& spec : publish) {
    absl::StatusOr<fcvm::v1::PortMapping> p = ParsePublish(spec);
    if (!p.ok()) return ForFlag(p.status(), "--publish");
    *req.mutable_network()->add_publish() = *p;
  }
  return req;
}

absl::StatusOr<fcvm::v1::ForkVmRequest> ParseForkVm(FlagParser& flags, const Args& args) {
  BatchFlags batch;
  std::string snapshot_name;
  batch.Register(flags, "fork", "VM-fork");
  flags.String("snapshot-name", &snapshot_name,
               "name of the snapshot (memory layer) the fork makes (default: VM-fork-HEX)", "NAME");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::ForkVmRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"VM_REF"}, 0, "fork VM_REF [options]"));
  req.set_vm_ref(positional[0]);
  req.set_memory_backend(fcvm::v1::MEMORY_BACKEND_UFFD);
  req.set_snapshot_name(snapshot_name);
  RETURN_IF_ERROR(batch.Fill(&req));
  return req;
}

absl::StatusOr<VsockRequest> ParseVsock(FlagParser& flags, const Args& args) {
  std::string timeout = "5s";
  flags.String("connect-timeout", &timeout, "how long to wait for the guest to accept (default 5s)",
               "DURATION");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  VsockRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"VM_REF", "PORT"}, 0, "vsock VM_REF PORT"));
  req.vm.set_ref(positional[0]);
  if (!absl::SimpleAtoi(positional[1], &req.port)) {
    return absl::InvalidArgumentError(absl::StrCat("PORT: '", positional[1], "' is not a port number"));
  }
  if (!absl::ParseDuration(timeout, &req.connect_timeout) || req.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--connect-timeout: not a positive duration: '", timeout, "'"));
  }
  return req;
}

absl::StatusOr<fcvm::v1::GetVmMetadataRequest> ParseGetVmMetadata(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(std::string ref, ParseRef(flags, args, "metadata get VM_REF", "VM_REF"));
  fcvm::v1::GetVmMetadataRequest req;
  req.set_ref(ref);
  return req;
}

absl::StatusOr<fcvm::v1::SetVmMetadataRequest> ParseSetVmMetadata(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::SetVmMetadataRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"VM_REF", "FILE"}, 0, "metadata set VM_REF FILE|-"));
  req.set_ref(positional[0]);
  ASSIGN_OR_RETURN(std::string text, ReadMetadata(positional[1], "metadata"));
  req.set_json(std::move(text));
  return req;
}

absl::StatusOr<fcvm::v1::GetVersionRequest> ParseGetVersion(FlagParser& flags, const Args& args) {
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  if (!flags.help_requested()) RETURN_IF_ERROR(CheckPositional(positional, {}, 0, "version"));
  return fcvm::v1::GetVersionRequest();
}

absl::StatusOr<fcvm::v1::GetPageServerStatsRequest> ParseGetPageServerStats(FlagParser& flags,
                                                                            const Args& args) {
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::GetPageServerStatsRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"VM_REF"}, 1, "stats [VM_REF]"));
  if (!positional.empty()) req.set_vm_ref(positional[0]);
  return req;
}

absl::StatusOr<fcvm::v1::WatchEventsRequest> ParseWatchEvents(FlagParser& flags, const Args& args) {
  bool from_start = false;
  int64_t after = -1;
  flags.Bool("from-start", &from_start,
             "first print the events fcvmd kept (the last 4096, start-up reconcile included)");
  flags.Int("after", &after, "first print the kept events numbered above SEQ (implies --from-start)");
  ASSIGN_OR_RETURN(Args positional, ParseFlags(flags, args));
  fcvm::v1::WatchEventsRequest req;
  if (flags.help_requested()) return req;
  RETURN_IF_ERROR(CheckPositional(positional, {"REF"}, 1, "watch [REF]"));
  if (!positional.empty()) req.set_ref(positional[0]);
  if (after < -1) return absl::InvalidArgumentError(absl::StrCat("--after must be 0 or more, got ", after));
  if (from_start || after >= 0) {
    req.set_from_backlog(true);
    req.set_after_sequence(after >= 0 ? static_cast<uint64_t>(after) : 0);
  }
  return req;
}

}  // namespace fcvm::cli
