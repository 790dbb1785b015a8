#include "lib/metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"

namespace fcvm::metrics {

absl::StatusOr<ProcStat> ParseProcStat(absl::string_view text) {
  size_t close = text.rfind(')');
  if (close == absl::string_view::npos)
    return absl::InvalidArgumentError("proc stat: no ')' after the command");
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::StripAsciiWhitespace(text.substr(close + 1)), ' ', absl::SkipEmpty());
  // f[0] is field 3 (state); field k is f[k - 3]. rss is field 24.
  if (f.size() < 22) {
    return absl::InvalidArgumentError(absl::StrCat("proc stat: ", f.size() + 2, " fields, want at least 24"));
  }
  auto field = [&](int k) { return f[static_cast<size_t>(k - 3)]; };
  ProcStat s;
  if (!absl::SimpleAtoi(field(14), &s.utime_ticks) || !absl::SimpleAtoi(field(15), &s.stime_ticks) ||
      !absl::SimpleAtoi(field(20), &s.num_threads) || !absl::SimpleAtoi(field(22), &s.start_ticks) ||
      !absl::SimpleAtoi(field(23), &s.vsize_bytes) || !absl::SimpleAtoi(field(24), &s.rss_pages)) {
    return absl::InvalidArgumentError("proc stat: a numeric field is not a number");
  }
  return s;
}

absl::StatusOr<int64_t> ParseBootTime(absl::string_view proc_stat_text) {
  for (absl::string_view line : absl::StrSplit(proc_stat_text, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    int64_t btime = 0;
    if (!absl::SimpleAtoi(line, &btime))
      return absl::InvalidArgumentError("/proc/stat: btime is not a number");
    return btime;
  }
  return absl::InvalidArgumentError("/proc/stat: no btime line");
}

absl::StatusOr<int64_t> CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return ErrnoError("opendir /proc/self/fd");
  int64_t count = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the directory's own fd
}

namespace {

std::optional<ProcStat> ReadSelfStat() {
  absl::StatusOr<std::string> text = ReadFile("/proc/self/stat");
  if (!text.ok()) return std::nullopt;
  absl::StatusOr<ProcStat> s = ParseProcStat(*text);
  if (!s.ok()) return std::nullopt;
  return *s;
}

// One unlabelled sample, or none when `value` is unknown.
std::vector<Sample> One(std::optional<double> value) {
  if (!value) return {};
  return {Sample{{}, *value}};
}

}  // namespace

absl::StatusOr<std::vector<CallbackHandle>> AddProcessMetrics(Registry& registry) {
  const double ticks_per_second = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page_size = static_cast<double>(sysconf(_SC_PAGESIZE));
  // Fixed for the life of the process: computed once.
  std::optional<double> start_time;
  if (std::optional<ProcStat> s = ReadSelfStat()) {
    absl::StatusOr<std::string> proc_stat = ReadFile("/proc/stat");
    absl::StatusOr<int64_t> btime = proc_stat.ok() ? ParseBootTime(*proc_stat) : proc_stat.status();
    if (btime.ok())
      start_time = static_cast<double>(*btime) + static_cast<double>(s->start_ticks) / ticks_per_second;
  }

  struct Def {
    MetricType type;
    const char* name;
    const char* help;
    CollectFn fn;
  };
  std::vector<Def> defs = {
      {MetricType::kCounter, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
       [=] {
         std::optional<ProcStat> s = ReadSelfStat();
         if (!s) return One(std::nullopt);
         return One(static_cast<double>(s->utime_ticks + s->stime_ticks) / ticks_per_second);
       }},
      {MetricType::kGauge, "process_open_fds", "Number of open file descriptors.",
       [] {
         absl::StatusOr<int64_t> n = CountOpenFds();
         return One(n.ok() ? std::optional<double>(static_cast<double>(*n)) : std::nullopt);
       }},
      {MetricType::kGauge, "process_max_fds", "Maximum number of open file descriptors.",
       [] {
         rlimit rl;
         if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return One(std::nullopt);
         return One(rl.rlim_cur == RLIM_INFINITY ? std::optional<double>()
                                                 : static_cast<double>(rl.rlim_cur));
       }},
      {MetricType::kGauge, "process_resident_memory_bytes", "Resident memory size in bytes.",
       [=] {
         std::optional<ProcStat> s = ReadSelfStat();
         return One(s ? std::optional<double>(static_cast<double>(s->rss_pages) * page_size) : std::nullopt);
       }},
      {MetricType::kGauge, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
       [] {
         std::optional<ProcStat> s = ReadSelfStat();
         return One(s ? std::optional<double>(static_cast<double>(s->vsize_bytes)) : std::nullopt);
       }},
      {MetricType::kGauge, "process_start_time_seconds",
       "Start time of the process since unix epoch in seconds.", [=] { return One(start_time); }},
      {MetricType::kGauge, "process_threads", "Number of OS threads in the process.",
       [] {
         std::optional<ProcStat> s = ReadSelfStat();
         return One(s ? std::optional<double>(static_cast<double>(s->num_threads)) : std::nullopt);
       }},
  };
  std::vector<CallbackHandle> handles;
  for (Def& d : defs) {
    ASSIGN_OR_RETURN(CallbackHandle h,
                     registry.AddCallback(d.type, {.name = d.name, .help = d.help}, std::move(d.fn)));
    handles.push_back(std::move(h));
  }
  return handles;
}

}  // namespace fcvm::metrics
