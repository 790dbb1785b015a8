#include "cli/top.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/format.h"
#include "google/protobuf/struct.pb.h"

namespace fcvm::cli {
namespace {

namespace v1 = ::fcvm::v1;

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + static_cast<double>(d.nanos()) / 1e9;
}

absl::Time ToTime(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

// Descending, a missing value last.
template <typename T>
int CompareDesc(const std::optional<T>& a, const std::optional<T>& b) {
  if (a.has_value() != b.has_value()) return a.has_value() ? -1 : 1;
  if (!a.has_value() || *a == *b) return 0;
  return *a > *b ? -1 : 1;
}

google::protobuf::Value Number(std::optional<double> v) {
  google::protobuf::Value out;
  if (v.has_value()) {
    out.set_number_value(*v);
  } else {
    out.set_null_value(google::protobuf::NULL_VALUE);
  }
  return out;
}

std::string Percent(const std::optional<double>& v) {
  return v.has_value() ? absl::StrFormat("%.1f", *v) : "-";
}

}  // namespace

absl::StatusOr<TopSort> ParseTopSort(absl::string_view name) {
  static const std::pair<const char*, TopSort> kSorts[] = {
      {"cpu", TopSort::kCpu},       {"rss", TopSort::kRss},       {"pss", TopSort::kPss},
      {"faults", TopSort::kFaults}, {"uptime", TopSort::kUptime}, {"name", TopSort::kName},
  };
  std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [n, s] : kSorts) {
    if (lower == n) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown sort key '", name, "' (want cpu, rss, pss, faults, uptime or name)"));
}

std::vector<TopRow> ComputeTop(const v1::ListVmsResponse& before, const v1::ListVmsResponse& now,
                               TopSort sort) {
  std::map<std::string, const v1::Vm*> earlier;
  for (const v1::Vm& vm : before.vms()) {
    if (vm.has_usage()) earlier[vm.id()] = &vm;
  }
  std::vector<TopRow> rows;
  for (const v1::Vm& vm : now.vms()) {
    TopRow r;
    r.id = vm.id();
    r.name = vm.name();
    r.state = vm.state();
    r.has_usage = vm.has_usage();
    if (r.has_usage) {
      const v1::VmUsage& u = vm.usage();
      r.cpu_seconds = Seconds(u.cpu_time());
      r.rss_bytes = u.rss_bytes();
      if (u.has_pss_bytes()) r.pss_bytes = u.pss_bytes();
      r.page_faults_served = u.page_faults_served();
      r.uptime_seconds = Seconds(u.uptime());
      auto it = earlier.find(vm.id());
      if (it != earlier.end()) {
        const v1::VmUsage& b = it->second->usage();
        double dt = absl::ToDoubleSeconds(ToTime(u.sampled_at()) - ToTime(b.sampled_at()));
        if (dt > 0) {
          r.cpu_percent = std::max(0.0, (r.cpu_seconds - Seconds(b.cpu_time())) / dt * 100.0);
          double faults =
              static_cast<double>(u.page_faults_served()) - static_cast<double>(b.page_faults_served());
          r.faults_per_second = std::max(0.0, faults / dt);
        }
      }
    }
    rows.push_back(std::move(r));
  }
  auto key = [sort](const TopRow& r) -> std::optional<double> {
    if (!r.has_usage) return std::nullopt;
    switch (sort) {
      case TopSort::kCpu:
        return r.cpu_percent;
      case TopSort::kRss:
        return static_cast<double>(r.rss_bytes);
      case TopSort::kPss:
        return r.pss_bytes.has_value() ? std::optional<double>(static_cast<double>(*r.pss_bytes))
                                       : std::nullopt;
      case TopSort::kFaults:
        return r.faults_per_second.has_value()
                   ? r.faults_per_second
                   : std::optional<double>(static_cast<double>(r.page_faults_served));
      case TopSort::kUptime:
        return r.uptime_seconds;
      case TopSort::kName:
        return std::nullopt;
    }
    return std::nullopt;
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const TopRow& a, const TopRow& b) {
    if (sort != TopSort::kName) {
      int c = CompareDesc(key(a), key(b));
      if (c != 0) return c < 0;
    }
    return a.name != b.name ? a.name < b.name : a.id < b.id;
  });
  return rows;
}

std::string FormatSeconds(double s) {
  if (!(s >= 0)) s = 0;
  if (s < 10) return absl::StrFormat("%.2fs", s);
  if (s < 60) return absl::StrFormat("%.1fs", s);
  const int64_t whole = static_cast<int64_t>(s);
  if (whole < 3600) return absl::StrFormat("%dm%02ds", whole / 60, whole % 60);
  if (whole < 86400) return absl::StrFormat("%dh%02dm", whole / 3600, (whole % 3600) / 60);
  return absl::StrFormat("%dd%02dh", whole / 86400, (whole % 86400) / 3600);
}

std::string FormatTop(const std::vector<TopRow>& rows, absl::Time now, bool pss) {
  int running = 0, paused = 0, other = 0;
  double cpu = 0;
  uint64_t rss = 0;
  for (const TopRow& r : rows) {
    if (r.state == v1::VM_STATE_RUNNING) {
      ++running;
    } else if (r.state == v1::VM_STATE_PAUSED) {
      ++paused;
    } else {
      ++other;
    }
    cpu += r.cpu_percent.value_or(0);
    rss += r.rss_bytes;
  }
  std::string out =
      absl::StrCat("fcvm top - ", absl::FormatTime("%H:%M:%S", now, absl::LocalTimeZone()), ", ", rows.size(),
                   rows.size() == 1 ? " VM: " : " VMs: ", running, " running, ", paused, " paused, ", other,
                   " other; CPU ", absl::StrFormat("%.1f", cpu), " %, RSS ", FormatBytes(rss), "\n\n");
  std::vector<std::string> headers = {"ID", "NAME", "STATE", "CPU%", "CPU-TIME", "RSS"};
  if (pss) headers.push_back("PSS");
  for (const char* h : {"FAULTS", "FAULTS/S", "UPTIME"}) headers.push_back(h);
  std::vector<bool> right(headers.size(), true);
  right[0] = right[1] = right[2] = false;
  Table t(headers, right);
  for (const TopRow& r : rows) {
    std::vector<std::string> cells = {r.id, r.name, StateName(r.state)};
    if (!r.has_usage) {
      cells.resize(headers.size(), "-");
    } else {
      cells.push_back(Percent(r.cpu_percent));
      cells.push_back(FormatSeconds(r.cpu_seconds));
      cells.push_back(FormatBytes(r.rss_bytes));
      if (pss) cells.push_back(r.pss_bytes.has_value() ? FormatBytes(*r.pss_bytes) : "-");
      cells.push_back(absl::StrCat(r.page_faults_served));
      cells.push_back(r.faults_per_second.has_value() ? absl::StrFormat("%.0f", *r.faults_per_second) : "-");
      cells.push_back(FormatSeconds(r.uptime_seconds));
    }
    t.AddRow(std::move(cells));
  }
  return out + t.Render();
}

std::string TopJson(const std::vector<TopRow>& rows, absl::Time sampled_at, absl::Duration interval) {
  google::protobuf::Struct root;
  auto& f = *root.mutable_fields();
  f["sampled_at"].set_string_value(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", sampled_at, absl::UTCTimeZone()));
  f["interval_seconds"].set_number_value(absl::ToDoubleSeconds(interval));
  google::protobuf::ListValue* vms = f["vms"].mutable_list_value();
  for (const TopRow& r : rows) {
    auto& v = *vms->add_values()->mutable_struct_value()->mutable_fields();
    v["id"].set_string_value(r.id);
    v["name"].set_string_value(r.name);
    v["state"].set_string_value(StateName(r.state));
    auto known = [&r](double x) { return r.has_usage ? std::optional<double>(x) : std::nullopt; };
    v["cpu_percent"] = Number(r.cpu_percent);
    v["cpu_seconds"] = Number(known(r.cpu_seconds));
    v["rss_bytes"] = Number(known(static_cast<double>(r.rss_bytes)));
    v["pss_bytes"] = Number(r.pss_bytes.has_value() ? std::optional<double>(static_cast<double>(*r.pss_bytes))
                                                    : std::nullopt);
    v["page_faults_served"] = Number(known(static_cast<double>(r.page_faults_served)));
    v["faults_per_second"] = Number(r.faults_per_second);
    v["uptime_seconds"] = Number(known(r.uptime_seconds));
  }
  return ToJson(root, /*pretty=*/false);
}

}  // namespace fcvm::cli
