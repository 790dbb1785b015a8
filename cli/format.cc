#include "cli/format.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/top.h"
#include "google/protobuf/util/json_util.h"

namespace fcvm::cli {
namespace {

// "VM_STATE_RUNNING" -> "running", with `prefix` removed.
std::string LowerSuffix(std::string name, absl::string_view prefix) {
  if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(c == '_' ? '-' : std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

bool UffdClone(const fcvm::v1::Vm& vm) {
  return !vm.snapshot_id().empty() && vm.memory_backend() != fcvm::v1::MEMORY_BACKEND_FILE;
}

std::string Pid(int32_t pid) { return pid > 0 ? absl::StrCat(pid) : "-"; }

// "key: value" lines with the values aligned.
class KeyValues {
 public:
  void Add(std::string key, std::string value) { rows_.emplace_back(std::move(key), std::move(value)); }
  std::string Render(absl::string_view indent = "") const {
    size_t width = 0;
    for (const auto& [k, v] : rows_) width = std::max(width, k.size());
    std::string out;
    for (const auto& [k, v] : rows_) {
      absl::StrAppend(&out, indent, absl::StrFormat("%-*s %s\n", static_cast<int>(width + 1), k + ":", v));
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> rows_;
};

std::string Drives(const fcvm::v1::VmConfig& config) {
  std::vector<std::string> drives;
  for (const fcvm::v1::Drive& d : config.drives()) {
    std::vector<std::string> flags;
    if (d.is_root_device()) flags.push_back("root");
    flags.push_back(d.read_only() ? "ro" : "rw");
    drives.push_back(absl::StrCat(d.drive_id(), "=", d.path(), " (", absl::StrJoin(flags, ","), ")"));
  }
  return drives.empty() ? "-" : absl::StrJoin(drives, ", ");
}

std::string Ports(const google::protobuf::RepeatedPtrField<fcvm::v1::PortMapping>& ports) {
  std::vector<std::string> out;
  for (const fcvm::v1::PortMapping& p : ports) {
    out.push_back(
        absl::StrCat(p.host_port(), "->", p.guest_port(), "/", p.protocol().empty() ? "tcp" : p.protocol()));
  }
  return out.empty() ? "-" : absl::StrJoin(out, ", ");
}

void AddConfig(const fcvm::v1::VmConfig& c, KeyValues* kv) {
  kv->Add("kernel", OrDash(c.kernel_path()));
  kv->Add("initrd", OrDash(c.initrd_path()));
  kv->Add("boot args", OrDash(c.boot_args()));
  kv->Add("vcpus", absl::StrCat(c.vcpu_count()));
  kv->Add("memory", absl::StrCat(c.memory_mib(), " MiB"));
  kv->Add("page size", c.huge_pages() == fcvm::v1::HUGE_PAGES_2M ? "2 MiB (huge pages)" : "4 KiB");
  kv->Add("drives", Drives(c));
  kv->Add("network", c.network().enabled() ? "enabled" : "none");
}

std::string Count(uint64_t n) { return absl::StrCat(n); }

std::string Us(double us) { return absl::StrFormat("%.1f", us); }

std::vector<std::string> StatsCells(const fcvm::v1::FaultStats& s) {
  return {Count(s.faults()),           Count(s.pages_copied()), Count(s.zero_pages()),
          Count(s.prefetched_pages()), Us(s.latency_p50_us()),  Us(s.latency_p99_us())};
}

}  // namespace

Table::Table(std::vector<std::string> headers, std::vector<bool> right_aligned)
    : headers_(std::move(headers)), right_(std::move(right_aligned)) {
  right_.resize(headers_.size(), false);
}

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

std::string Table::Render() const {
  std::vector<size_t> width(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) width[c] = headers_[c].size();
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (size_t c = 0; c < cells.size(); ++c) {
      const bool last = c + 1 == cells.size();
      if (c > 0) l += "  ";
      const int w = static_cast<int>(width[c]);
      if (right_[c]) {
        absl::StrAppend(&l, absl::StrFormat("%*s", w, cells[c]));
      } else if (last) {
        l += cells[c];
      } else {
        absl::StrAppend(&l, absl::StrFormat("%-*s", w, cells[c]));
      }
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l;
    out += "\n";
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

std::string ToJson(const google::protobuf::Message& message, bool pretty) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = pretty;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  // Cannot fail for a message of a linked-in type (no Any fields here).
  (void)google::protobuf::util::MessageToJsonString(message, &json, opts);
  if (json.empty() || json.back() != '\n') json += "\n";
  return json;
}

std::string StateName(fcvm::v1::VmState state) {
  if (state == fcvm::v1::VM_STATE_UNSPECIFIED) return "-";
  return LowerSuffix(fcvm::v1::VmState_Name(state), "VM_STATE_");
}

std::string BackendName(fcvm::v1::MemoryBackend backend) {
  return backend == fcvm::v1::MEMORY_BACKEND_FILE ? "file" : "uffd";
}

std::string PrefetchName(fcvm::v1::PrefetchPolicy policy) {
  if (policy == fcvm::v1::PREFETCH_POLICY_UNSPECIFIED) return "auto";
  return LowerSuffix(fcvm::v1::PrefetchPolicy_Name(policy), "PREFETCH_POLICY_");
}

std::string EventKindName(fcvm::v1::Event::Kind kind) {
  if (kind == fcvm::v1::Event::KIND_UNSPECIFIED) return "event";
  return LowerSuffix(fcvm::v1::Event::Kind_Name(kind), "KIND_");
}

double DurationMs(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) * 1e3 + static_cast<double>(d.nanos()) / 1e6;
}

std::string FormatMs(double ms) { return absl::StrFormat("%.1f", ms); }

std::string FormatDuration(const google::protobuf::Duration& d, bool set) {
  return set ? absl::StrCat(FormatMs(DurationMs(d)), " ms") : "-";
}

std::string FormatTime(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0 && ts.nanos() == 0) return "-";
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

std::string FormatAge(const google::protobuf::Timestamp& ts, absl::Time now) {
  if (ts.seconds() == 0) return "-";
  absl::Duration d = std::max(now - absl::FromUnixSeconds(ts.seconds()), absl::ZeroDuration());
  if (d < absl::Minutes(1)) return absl::StrCat(absl::ToInt64Seconds(d), "s");
  if (d < absl::Hours(1)) return absl::StrCat(absl::ToInt64Minutes(d), "m");
  if (d < absl::Hours(48)) return absl::StrCat(absl::ToInt64Hours(d), "h");
  return absl::StrCat(absl::ToInt64Hours(d) / 24, "d");
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  size_t unit = 0;
  while (v >= 1024 && unit + 1 < std::size(kUnits)) {
    v /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  if (v == std::floor(v)) return absl::StrFormat("%.0f %s", v, kUnits[unit]);
  return absl::StrFormat("%.1f %s", v, kUnits[unit]);
}

std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels) {
  if (labels.empty()) return "-";
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  return absl::StrJoin(sorted, ",", absl::PairFormatter("="));
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(p / 100.0 * static_cast<double>(values.size()));
  const size_t index = rank < 1 ? 0 : std::min(values.size(), static_cast<size_t>(rank)) - 1;
  return values[index];
}

std::string FormatVmTable(const fcvm::v1::ListVmsResponse& resp, absl::Time now) {
  bool pss = false;
  for (const fcvm::v1::Vm& vm : resp.vms()) pss |= vm.usage().has_pss_bytes();
  std::vector<std::string> headers = {"ID",  "NAME", "STATE", "BACKEND", "SNAPSHOT",
                                      "PID", "IP",   "CPU",   "RSS"};
  if (pss) headers.push_back("PSS");
  headers.push_back("FAULTS");
  headers.push_back("AGE");
  std::vector<bool> right(headers.size(), false);
  for (size_t i = 7; i + 1 < headers.size(); ++i) right[i] = true;
  Table t(headers, right);
  for (const fcvm::v1::Vm& vm : resp.vms()) {
    // IP: the VM's unique host-reachable address (its guest address is the
    // same in every clone).
    std::vector<std::string> row = {vm.id(),
                                    vm.name(),
                                    StateName(vm.state()),
                                    vm.snapshot_id().empty() ? "-" : BackendName(vm.memory_backend()),
                                    OrDash(vm.snapshot_id()),
                                    Pid(vm.pid()),
                                    OrDash(vm.network().host_ip())};
    const fcvm::v1::VmUsage& u = vm.usage();
    const bool has = vm.has_usage();
    row.push_back(has ? FormatSeconds(static_cast<double>(u.cpu_time().seconds()) +
                                      static_cast<double>(u.cpu_time().nanos()) / 1e9)
                      : "-");
    row.push_back(has ? FormatBytes(u.rss_bytes()) : "-");
    if (pss) row.push_back(u.has_pss_bytes() ? FormatBytes(u.pss_bytes()) : "-");
    row.push_back(UffdClone(vm) && has ? absl::StrCat(u.page_faults_served()) : "-");
    row.push_back(FormatAge(vm.created_at(), now));
    t.AddRow(std::move(row));
  }
  return t.Render();
}

std::string FormatVmSummary(const fcvm::v1::Vm& vm) {
  KeyValues kv;
  kv.Add("id", vm.id());
  kv.Add("name", vm.name());
  kv.Add("state", StateName(vm.state()));
  kv.Add("pid", Pid(vm.pid()));
  kv.Add("console log", OrDash(vm.console_log_path()));
  if (!vm.error().empty()) kv.Add("error", vm.error());
  return kv.Render();
}

std::string FormatVmDetails(const fcvm::v1::Vm& vm, absl::Time now) {
  KeyValues kv;
  kv.Add("id", vm.id());
  kv.Add("name", vm.name());
  kv.Add("state", StateName(vm.state()));
  if (!vm.error().empty()) kv.Add("error", vm.error());
  kv.Add("labels", FormatLabels(vm.labels()));
  kv.Add("pid", Pid(vm.pid()));
  kv.Add("created",
         absl::StrCat(FormatTime(vm.created_at()), " (", FormatAge(vm.created_at(), now), " ago)"));
  kv.Add("console log", OrDash(vm.console_log_path()));
  if (!vm.vsock_uds_path().empty()) {
    kv.Add("vsock",
           absl::StrCat(vm.vsock_uds_path(), " (guest cid ",
                        vm.config().vsock().guest_cid() == 0 ? 3 : vm.config().vsock().guest_cid(), ")"));
  }
  kv.Add("snapshot", OrDash(vm.snapshot_id()));
  if (!vm.snapshot_id().empty()) {
    kv.Add("memory backend", BackendName(vm.memory_backend()));
    kv.Add("prefetch", PrefetchName(vm.prefetch_policy()));
  }
  std::string out = kv.Render();

  KeyValues config;
  AddConfig(vm.config(), &config);
  absl::StrAppend(&out, "config:\n", config.Render("  "));

  const fcvm::v1::NetworkStatus& n = vm.network();
  if (!n.netns().empty() || !n.guest_ip().empty() || !n.host_ip().empty()) {
    KeyValues net;
    net.Add("netns", OrDash(n.netns()));
    net.Add("tap", OrDash(n.tap()));
    net.Add("guest ip", OrDash(n.guest_ip()));
    net.Add("host ip", OrDash(n.host_ip()));
    net.Add("guest mac", OrDash(n.guest_mac()));
    net.Add("publish", Ports(n.publish()));
    absl::StrAppend(&out, "network:\n", net.Render("  "));
  }

  if (vm.has_jail()) {
    const fcvm::v1::JailStatus& j = vm.jail();
    KeyValues jail;
    jail.Add("uid/gid", absl::StrCat(j.uid(), "/", j.gid()));
    jail.Add("chroot", OrDash(j.chroot()));
    jail.Add("cgroup", OrDash(j.cgroup_version()));
    const fcvm::v1::ResourceLimits& l = j.limits();
    jail.Add("memory limit", absl::StrCat(l.memory_mib(), " MiB"));
    jail.Add("cpu limit", absl::StrCat(l.cpu_percent(), "%"));
    jail.Add("cpu weight", l.cpu_weight() == 0 ? "-" : absl::StrCat(l.cpu_weight()));
    jail.Add("pids max", absl::StrCat(l.pids_max()));
    absl::StrAppend(&out, "jail:\n", jail.Render("  "));
  }

  const fcvm::v1::VmTimings& t = vm.timings();
  KeyValues timings;
  timings.Add("total", FormatDuration(t.total(), t.has_total()));
  timings.Add("process ready", FormatDuration(t.process_ready(), t.has_process_ready()));
  timings.Add("disks", FormatDuration(t.disks(), t.has_disks()));
  timings.Add("load", FormatDuration(t.load(), t.has_load()));
  timings.Add("prefetch", FormatDuration(t.prefetch(), t.has_prefetch()));
  timings.Add("network", FormatDuration(t.network(), t.has_network()));
  timings.Add("warm pool", t.from_warm_pool() ? "yes" : "no");
  absl::StrAppend(&out, "timings:\n", timings.Render("  "));

  if (vm.has_usage()) {
    const fcvm::v1::VmUsage& u = vm.usage();
    KeyValues usage;
    usage.Add("cpu time", FormatSeconds(static_cast<double>(u.cpu_time().seconds()) +
                                        static_cast<double>(u.cpu_time().nanos()) / 1e9));
    usage.Add("rss", FormatBytes(u.rss_bytes()));
    usage.Add("pss", u.has_pss_bytes() ? FormatBytes(u.pss_bytes()) : "-");
    usage.Add("faults served", UffdClone(vm) ? absl::StrCat(u.page_faults_served()) : "-");
    usage.Add("uptime", FormatSeconds(static_cast<double>(u.uptime().seconds()) +
                                      static_cast<double>(u.uptime().nanos()) / 1e9));
    usage.Add("sampled", FormatTime(u.sampled_at()));
    absl::StrAppend(&out, "usage:\n", usage.Render("  "));
  }
  return out;
}

std::string FormatSnapshotTable(const fcvm::v1::ListSnapshotsResponse& resp, absl::Time now) {
  Table t({"ID", "NAME", "SOURCE", "MEMORY", "WORKING-SET", "CLONES", "AGE"},
          {false, false, false, true, true, true});
  for (const fcvm::v1::Snapshot& s : resp.snapshots()) {
    t.AddRow({s.id(), s.name(), OrDash(s.source_vm_id()), FormatBytes(s.memory_bytes()),
              s.working_set_pages() > 0 ? absl::StrCat(s.working_set_pages(), " pages") : "-",
              absl::StrCat(s.clone_count()), FormatAge(s.created_at(), now)});
  }
  return t.Render();
}

std::string FormatSnapshotDetails(const fcvm::v1::Snapshot& s, absl::Time now) {
  KeyValues kv;
  kv.Add("id", s.id());
  kv.Add("name", s.name());
  kv.Add("labels", FormatLabels(s.labels()));
  kv.Add("source vm", OrDash(s.source_vm_id()));
  kv.Add("created", absl::StrCat(FormatTime(s.created_at()), " (", FormatAge(s.created_at(), now), " ago)"));
  kv.Add("create time", FormatDuration(s.create_duration(), s.has_create_duration()));
  kv.Add("path", OrDash(s.path()));
  kv.Add("firecracker", OrDash(s.firecracker_version()));
  kv.Add("memory", absl::StrCat(FormatBytes(s.memory_bytes()), " (", s.zero_pages(), " zero pages)"));
  kv.Add("page size", s.memory_page_size() == 0 ? "-"
                      : s.memory_page_size() > 4096
                          ? absl::StrCat(FormatBytes(s.memory_page_size()), " (huge pages: UFFD clones only)")
                          : FormatBytes(s.memory_page_size()));
  if (!s.parent_id().empty()) {
    // A live fork's memory layer.
    kv.Add("memory layer",
           absl::StrCat("on ", s.parent_id(), " (", s.memory_layers(), " layers; this one holds ",
                        FormatBytes(s.memory_allocated_bytes()), ")"));
  }
  kv.Add("vmstate", FormatBytes(s.vmstate_bytes()));
  kv.Add("working set",
         s.working_set_pages() > 0 ? absl::StrCat(s.working_set_pages(), " pages") : "not recorded");
  kv.Add("clones", absl::StrCat(s.clone_count()));
  kv.Add("memory sha256", OrDash(s.memory_sha256()));
  kv.Add("vmstate sha256", OrDash(s.vmstate_sha256()));
  std::string out = kv.Render();
  if (s.has_host()) {
    const fcvm::v1::SnapshotHost& h = s.host();
    KeyValues host;
    host.Add("firecracker", OrDash(h.firecracker_version()));
    host.Add("snapshot format", OrDash(h.snapshot_format_version()));
    host.Add("cpu",
             absl::StrCat(OrDash(h.cpu_vendor()), " family ", h.cpu_family(), " model ", h.cpu_model(),
                          " stepping ", h.cpu_stepping(),
                          h.cpu_model_name().empty() ? "" : absl::StrCat(" (", h.cpu_model_name(), ")")));
    host.Add("cpu flags", h.cpu_flags().empty() ? "-" : absl::StrJoin(h.cpu_flags(), " "));
    host.Add("cpu template", h.cpu_template().empty() ? "none" : h.cpu_template());
    host.Add("kernel", OrDash(h.kernel_release()));
    host.Add("page size", absl::StrCat(h.page_size()));
    absl::StrAppend(&out, "made on:\n", host.Render("  "));
  } else {
    absl::StrAppend(&out, "made on: not recorded (an older snapshot)\n");
  }
  KeyValues config;
  AddConfig(s.config(), &config);
  absl::StrAppend(&out, "config:\n", config.Render("  "));
  return out;
}

std::string FormatDeleteSnapshot(const fcvm::v1::DeleteSnapshotResponse& resp) {
  std::string out = absl::StrCat("deleted ", resp.id(), "\n");
  if (resp.stopped_vm_ids_size() > 0) {
    absl::StrAppend(&out, "stopped clones: ", absl::StrJoin(resp.stopped_vm_ids(), ", "), "\n");
  }
  return out;
}

std::string FormatDeleteVm(const fcvm::v1::DeleteVmResponse& resp) {
  return absl::StrCat("deleted ", resp.id(),
                      resp.stop_mode().empty() ? "" : absl::StrCat(" (", resp.stop_mode(), ")"), "\n");
}

std::string FormatCloneResult(const fcvm::v1::CloneSnapshotResponse& resp) {
  bool any_error = false;
  for (const fcvm::v1::Vm& vm : resp.clones()) any_error |= !vm.error().empty();
  std::vector<std::string> headers = {"NAME",     "ID",       "STATE",   "PID",
                                      "TOTAL_MS", "READY_MS", "LOAD_MS", "PREFETCH_MS"};
  std::vector<bool> right = {false, false, false, true, true, true, true, true};
  if (any_error) headers.push_back("ERROR");
  Table t(headers, right);
  std::vector<double> totals;
  for (const fcvm::v1::Vm& vm : resp.clones()) {
    const fcvm::v1::VmTimings& tm = vm.timings();
    auto ms = [](const google::protobuf::Duration& d, bool set) {
      return set ? FormatMs(DurationMs(d)) : "-";
    };
    t.AddRow({vm.name(), OrDash(vm.id()), StateName(vm.state()), Pid(vm.pid()),
              ms(tm.total(), tm.has_total()), ms(tm.process_ready(), tm.has_process_ready()),
              ms(tm.load(), tm.has_load()), ms(tm.prefetch(), tm.has_prefetch()), vm.error()});
    if (vm.state() != fcvm::v1::VM_STATE_FAILED && vm.error().empty() && tm.has_total()) {
      totals.push_back(DurationMs(tm.total()));
    }
  }
  std::string out = t.Render();
  absl::StrAppend(&out, resp.succeeded(), " succeeded, ", resp.failed(), " failed in ",
                  FormatMs(DurationMs(resp.total())), " ms; clone total ");
  if (totals.empty()) {
    absl::StrAppend(&out, "p50 -, p99 -\n");
  } else {
    absl::StrAppend(&out, "p50 ", FormatMs(Percentile(totals, 50)), " ms, p99 ",
                    FormatMs(Percentile(totals, 99)), " ms\n");
  }
  return out;
}

std::string FormatForkResult(const fcvm::v1::ForkVmResponse& resp) {
  fcvm::v1::CloneSnapshotResponse as_clones;
  *as_clones.mutable_clones() = resp.forks();
  *as_clones.mutable_total() = resp.total();
  as_clones.set_succeeded(resp.succeeded());
  as_clones.set_failed(resp.failed());
  std::string out = FormatCloneResult(as_clones);
  const fcvm::v1::Snapshot& s = resp.snapshot();
  absl::StrAppend(&out, "source paused ", FormatMs(DurationMs(resp.source_pause())), " ms: ", resp.kind(),
                  " snapshot ", s.name(), " (", s.id(), "), ", FormatMs(resp.written_bytes() / 1048576.0),
                  " MiB written, ", s.memory_layers(), " memory layer(s)\n");
  return out;
}

std::string FormatPageServerStats(const fcvm::v1::PageServerStats& stats) {
  const std::vector<bool> right = {false, false, true, false, true, true, true, true, true, true};
  Table sessions(
      {"VM", "SNAPSHOT", "PID", "POLICY", "FAULTS", "COPIED", "ZERO", "PREFETCHED", "P50_US", "P99_US"},
      right);
  for (const fcvm::v1::CloneSessionStats& s : stats.sessions()) {
    std::vector<std::string> row = {s.vm_id(), s.snapshot_id(), Pid(s.peer_pid()), PrefetchName(s.policy())};
    for (std::string& cell : StatsCells(s.stats())) row.push_back(std::move(cell));
    sessions.AddRow(std::move(row));
  }
  std::vector<std::string> total = {"TOTAL", "", "", ""};
  for (std::string& cell : StatsCells(stats.total())) total.push_back(std::move(cell));
  sessions.AddRow(std::move(total));
  std::string out = sessions.Render();
  absl::StrAppend(&out, stats.sessions_size(), " sessions on ", stats.loop_threads(), " loop threads, ",
                  FormatBytes(stats.total().bytes_copied()), " copied, ", stats.total().eagain_retries(),
                  " EAGAIN retries, ", stats.dropped_sessions(), " dropped sessions\n");
  if (stats.snapshots_size() > 0) {
    Table snaps(
        {"SNAPSHOT", "MEMORY", "SESSIONS", "FAULTS", "COPIED", "ZERO", "PREFETCHED", "P50_US", "P99_US"},
        {false, true, true, true, true, true, true, true, true});
    for (const fcvm::v1::SnapshotMappingStats& m : stats.snapshots()) {
      std::vector<std::string> row = {m.snapshot_id(), FormatBytes(m.memory_bytes()),
                                      absl::StrCat(m.sessions())};
      for (std::string& cell : StatsCells(m.stats())) row.push_back(std::move(cell));
      snaps.AddRow(std::move(row));
    }
    absl::StrAppend(&out, "\n", snaps.Render());
  }
  return out;
}

std::string FormatEvent(const fcvm::v1::Event& e) {
  std::string object;
  if (!e.vm_id().empty() && !e.snapshot_id().empty()) {
    object = absl::StrCat(e.vm_id(), "/", e.snapshot_id());
  } else {
    object = OrDash(e.vm_id().empty() ? e.snapshot_id() : e.vm_id());
  }
  std::string line = FormatTime(e.time());
  if (e.sequence() > 0) absl::StrAppend(&line, "  #", e.sequence());
  absl::StrAppend(&line, "  ", absl::StrFormat("%-16s", EventKindName(e.kind())), "  ", object);
  if (e.kind() == fcvm::v1::Event::KIND_VM_STATE || e.state() != fcvm::v1::VM_STATE_UNSPECIFIED) {
    absl::StrAppend(&line, "  ", StateName(e.previous_state()), " -> ", StateName(e.state()));
  }
  if (!e.message().empty()) absl::StrAppend(&line, "  ", e.message());
  return line;
}

}  // namespace fcvm::cli
