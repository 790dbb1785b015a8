#include "lib/vm/vm_usage.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "lib/metrics/process_metrics.h"
#include "lib/vm/core.h"

namespace fcvm::vm {
namespace {

// A whole /proc file into `buf` (its size is not known in advance: read until
// EOF). NotFound when the process is gone.
absl::Status ReadProc(const std::string& path, std::string* buf) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ESRCH) return absl::NotFoundError(absl::StrCat(path, ": process gone"));
    return ErrnoError(absl::StrCat("open ", path));
  }
  buf->clear();
  char chunk[4096];
  while (true) {
    ssize_t n = ::read(fd.get(), chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ESRCH) return absl::NotFoundError(absl::StrCat(path, ": process gone"));
      return ErrnoError(absl::StrCat("read ", path));
    }
    if (n == 0) return absl::OkStatus();
    buf->append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace

absl::StatusOr<uint64_t> ParseSmapsRollupPss(absl::string_view text) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "Pss:")) continue;
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumeSuffix(&line, "kB")) break;
    uint64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib)) break;
    return kib * 1024;
  }
  return absl::InvalidArgumentError("smaps_rollup: no \"Pss: <n> kB\" line");
}

absl::StatusOr<ProcessUsage> ReadProcProcessUsage(pid_t pid, bool pss) {
  static const int64_t kTicksPerSecond = sysconf(_SC_CLK_TCK);
  static const int64_t kPageSize = sysconf(_SC_PAGESIZE);
  std::string buf;
  const std::string dir = absl::StrCat("/proc/", pid);
  RETURN_IF_ERROR(ReadProc(dir + "/stat", &buf));
  ASSIGN_OR_RETURN(metrics::ProcStat stat, metrics::ParseProcStat(buf));
  ProcessUsage u;
  u.cpu_time = absl::Seconds(static_cast<double>(stat.utime_ticks + stat.stime_ticks) /
                             static_cast<double>(kTicksPerSecond));
  u.rss_bytes =
      stat.rss_pages > 0 ? static_cast<uint64_t>(stat.rss_pages) * static_cast<uint64_t>(kPageSize) : 0;
  if (pss) {
    RETURN_IF_ERROR(ReadProc(dir + "/smaps_rollup", &buf));
    ASSIGN_OR_RETURN(u.pss_bytes, ParseSmapsRollupPss(buf));
  }
  return u;
}

std::map<std::string, VmUsage> CollectUsage(Core& core, const std::vector<std::string>& ids, bool pss) {
  struct Target {
    std::string id;
    VmInfo info;
  };
  std::vector<Target> targets;
  bool any_uffd = false;
  for (const std::string& id : ids) {
    absl::StatusOr<std::shared_ptr<VmEntry>> e = core.registry.Find(id);
    if (!e.ok()) continue;
    VmInfo info = core.registry.Info(**e);
    if (info.pid <= 0 || (info.state != VmState::kRunning && info.state != VmState::kPaused)) continue;
    any_uffd |= !info.snapshot_id.empty() && info.memory_backend == MemoryBackend::kUffd;
    targets.push_back({id, std::move(info)});
  }
  // Faults served, by VM: each clone's listener is tagged with its id.
  std::map<std::string, uint64_t> faults;
  if (any_uffd) {
    for (const uffd::ListenerStats& l : core.env.pager->GetStats().listeners) faults[l.tag] += l.stats.faults;
  }
  std::map<std::string, VmUsage> out;
  for (const Target& t : targets) {
    absl::StatusOr<ProcessUsage> p = core.env.host->ReadProcessUsage(t.info.pid, pss);
    if (!p.ok()) continue;  // exited just now: its state changes next
    VmUsage u;
    u.sampled_at = absl::Now();
    u.cpu_time = p->cpu_time;
    u.rss_bytes = p->rss_bytes;
    u.pss_bytes = p->pss_bytes;
    auto f = faults.find(t.id);
    if (f != faults.end()) u.page_faults_served = f->second;
    u.uptime = std::max(absl::ZeroDuration(), u.sampled_at - (t.info.created_at + t.info.timings.total));
    out.emplace(t.id, std::move(u));
  }
  return out;
}

}  // namespace fcvm::vm
