// The density suite: total PSS of N clones of the test guest with the File
// backend (pages shared through the page cache), with the UFFD backend
// (every page the page server installs is private to its clone), and with
// the UFFD backend under fcvmd --ksm=manage once KSM's merging has settled,
// for each --ksm-rates setting (pages_to_scan/sleep_millisecs). It reports
// the time from the batch's reply to the settled PSS, ksmd's CPU time over
// that stretch and in the 10 s after it, and whether the guests, which check
// their memory every tick, stayed OK.

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/clone/suites.h"
#include "lib/base/file_util.h"
#include "lib/base/ksm.h"
#include "lib/base/status.h"

namespace fcvm::bench {
namespace {

struct Row {
  std::string config;  // file, uffd, uffd+ksm <rate>
  double pss_mib = 0;
  double pss_before_mib = 0;   // ksm: right after the batch
  double settle_s = 0;         // ksm: batch reply -> settled (-1: did not settle)
  double ksmd_cpu_s = 0;       // ksm: over the settling
  double ksmd_steady_pct = 0;  // ksm: % of one CPU in the 10 s after
  uint64_t pages_sharing = 0;
  uint64_t pages_shared = 0;
  uint64_t full_scans = 0;
  int bad_ticks = 0;
  int ok_ticks = 0;
  int failed = 0;
};

double PssMib(const fcvm::v1::CloneSnapshotResponse& resp) {
  uint64_t kib = 0;
  for (const auto& c : resp.clones()) {
    if (c.pid() > 0) kib += PssKib(c.pid());
  }
  return static_cast<double>(kib) / 1024.0;
}

void CountCloneTicks(const fcvm::v1::CloneSnapshotResponse& resp, Row* row) {
  for (const auto& c : resp.clones()) CountTicks(c.console_log_path(), &row->ok_ticks, &row->bad_ticks);
}

absl::StatusOr<fcvm::v1::CloneSnapshotResponse> CloneBatch(Fcvmd& d, const Options& o,
                                                           const std::string& snap,
                                                           fcvm::v1::MemoryBackend backend, Row* row) {
  fcvm::v1::CloneSnapshotRequest req;
  req.set_snapshot_ref(snap);
  req.set_count(static_cast<uint32_t>(o.ksm_n));
  req.set_memory_backend(backend);
  req.set_parallelism(static_cast<uint32_t>(o.parallelism));
  fcvm::v1::CloneSnapshotResponse resp;
  RETURN_IF_ERROR(Check(d.snaps().CloneSnapshot(Ctx().get(), req, &resp), "clone"));
  for (const auto& c : resp.clones()) row->failed += c.state() == fcvm::v1::VM_STATE_RUNNING ? 0 : 1;
  return resp;
}

// PSS once the guests' first ticks have touched their memory.
absl::StatusOr<Row> Plain(Fcvmd& d, const Options& o, const std::string& snap,
                          fcvm::v1::MemoryBackend backend) {
  Row row;
  row.config = backend == fcvm::v1::MEMORY_BACKEND_FILE ? "file" : "uffd";
  ASSIGN_OR_RETURN(fcvm::v1::CloneSnapshotResponse resp, CloneBatch(d, o, snap, backend, &row));
  absl::SleepFor(absl::Milliseconds(std::max<int64_t>(3000, 3 * o.ksm_tick_ms)));
  row.pss_mib = PssMib(resp);
  CountCloneTicks(resp, &row);
  RETURN_IF_ERROR(DeleteClones(d, resp));
  return row;
}

absl::StatusOr<Row> Merged(Fcvmd& d, const Options& o, const std::string& snap, const std::string& rate) {
  Row row;
  row.config = absl::StrCat("uffd+ksm ", rate);
  pid_t ksmd = KsmdPid();
  double cpu0 = CpuMs(ksmd);
  ASSIGN_OR_RETURN(fcvm::v1::CloneSnapshotResponse resp,
                   CloneBatch(d, o, snap, fcvm::v1::MEMORY_BACKEND_UFFD, &row));
  absl::Time done = absl::Now();
  // Full passes counted from here: with no mergeable process (before the
  // batch) ksmd counts a full scan at every wake-up, and a pass that began
  // before the last clone registered did not see all of them.
  ASSIGN_OR_RETURN(KsmStatus k0, ReadKsm());
  // Sampled every second; settled once ksmd made two full passes since the
  // batch and the total stayed within 2% over the last 5 s.
  std::vector<double> pss;
  absl::Time deadline = done + absl::Seconds(o.ksm_timeout_s);
  row.settle_s = -1;
  while (absl::Now() < deadline) {
    absl::SleepFor(absl::Seconds(1));
    pss.push_back(PssMib(resp));
    if (pss.size() == 1) row.pss_before_mib = pss[0];
    ASSIGN_OR_RETURN(KsmStatus k, ReadKsm());
    // Two passes begun after the batch: three counted from k0.
    if (pss.size() < 6 || k.full_scans < k0.full_scans + 3) continue;
    auto [lo, hi] = std::minmax_element(pss.end() - 6, pss.end());
    if (*hi - *lo <= 0.02 * pss.back()) {
      row.settle_s = absl::ToDoubleSeconds(absl::Now() - done);
      break;
    }
  }
  row.pss_mib = pss.empty() ? 0 : pss.back();
  double cpu1 = CpuMs(ksmd);
  row.ksmd_cpu_s = (cpu1 - cpu0) / 1e3;
  absl::SleepFor(absl::Seconds(10));
  row.ksmd_steady_pct = (CpuMs(ksmd) - cpu1) / 10e3 * 100;
  ASSIGN_OR_RETURN(KsmStatus k, ReadKsm());
  row.pages_sharing = k.pages_sharing;
  row.pages_shared = k.pages_shared;
  row.full_scans = k.full_scans - k0.full_scans;
  CountCloneTicks(resp, &row);
  RETURN_IF_ERROR(DeleteClones(d, resp));
  return row;
}

}  // namespace

absl::Status RunKsmSuite(const Options& o, std::string* json) {
  if (absl::Status st = MemoryMergeSupported(); !st.ok()) return Annotate(st, "ksm suite");
  RETURN_IF_ERROR(Annotate(ReadKsm().status(), "ksm suite"));
  if (KsmdPid() == 0) return absl::FailedPreconditionError("ksm suite: no ksmd thread found");
  std::string load_before = LoadAverage();
  std::vector<Row> rows;
  ASSIGN_OR_RETURN(std::unique_ptr<Fcvmd> d, Fcvmd::Start(o, {"--warm-pool", "0", "--ksm", "off"}));
  ASSIGN_OR_RETURN(fcvm::v1::Snapshot snap,
                   PrepareSnapshot(*d, o, {.name = "dense", .tick_ms = o.ksm_tick_ms}));
  ASSIGN_OR_RETURN(Row file, Plain(*d, o, snap.id(), fcvm::v1::MEMORY_BACKEND_FILE));
  rows.push_back(file);
  ASSIGN_OR_RETURN(Row uffd, Plain(*d, o, snap.id(), fcvm::v1::MEMORY_BACKEND_UFFD));
  rows.push_back(uffd);
  for (const std::string& rate : o.ksm_rates) {
    std::vector<std::string> pr = absl::StrSplit(rate, '/');
    if (pr.size() != 2)
      return absl::InvalidArgumentError(absl::StrCat("--ksm-rates: '", rate, "' is not N/MS"));
    RETURN_IF_ERROR(d->Restart(
        {"--warm-pool", "0", "--ksm", "manage", "--ksm-pages-to-scan", pr[0], "--ksm-sleep-ms", pr[1]}));
    ASSIGN_OR_RETURN(Row merged, Merged(*d, o, snap.id(), rate));
    rows.push_back(merged);
    if (!o.json) std::cerr << "." << std::flush;
  }
  d.reset();  // fcvmd puts ksmd's settings back
  std::string load_after = LoadAverage();

  const double file_pss = rows[0].pss_mib;
  if (o.json) {
    absl::StrAppend(json, "\"ksm\": {\"load_before\": \"", load_before, "\", \"load_after\": \"", load_after,
                    "\", \"n\": ", o.ksm_n, ", \"tick_ms\": ", o.ksm_tick_ms, ", \"rows\": [\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      absl::StrAppend(
          json,
          absl::StrFormat(
              "  {\"config\": \"%s\", \"pss_mib\": %.1f, \"vs_file\": %.3f, \"pss_before_mib\": %.1f, "
              "\"settle_s\": %.1f, \"ksmd_cpu_s\": %.2f, \"ksmd_steady_pct\": %.1f, \"pages_sharing\": %d, "
              "\"pages_shared\": %d, \"full_scans\": %d, \"ok_ticks\": %d, \"bad_ticks\": %d, "
              "\"failed\": %d}%s\n",
              r.config, r.pss_mib, r.pss_mib / file_pss, r.pss_before_mib, r.settle_s, r.ksmd_cpu_s,
              r.ksmd_steady_pct, r.pages_sharing, r.pages_shared, r.full_scans, r.ok_ticks, r.bad_ticks,
              r.failed, i + 1 < rows.size() ? "," : ""));
    }
    absl::StrAppend(json, "]}");
    return absl::OkStatus();
  }
  std::cout << "\ndensity: " << o.ksm_n << " clones, guest tick " << o.ksm_tick_ms << " ms (load "
            << load_before << " -> " << load_after << ")\n"
            << absl::StrFormat("%-20s %8s %7s %10s %9s %10s %9s %9s %8s %6s %9s %6s\n", "config", "PSS MiB",
                               "vs file", "before MiB", "settle s", "ksmd cpu s", "ksmd %", "steady %",
                               "sharing", "scans", "ticks ok", "bad");
  for (const Row& r : rows) {
    bool ksm = r.config.rfind("uffd+ksm", 0) == 0;
    double cpu_pct = r.settle_s > 0 ? r.ksmd_cpu_s / r.settle_s * 100 : 0;
    std::cout << absl::StrFormat(
        "%-20s %8.1f %6.2fx %10s %9s %10s %9s %9s %8s %6s %9d %6d\n", r.config, r.pss_mib,
        r.pss_mib / file_pss, ksm ? absl::StrFormat("%.1f", r.pss_before_mib) : "-",
        ksm ? (r.settle_s < 0 ? std::string("no") : absl::StrFormat("%.0f", r.settle_s)) : "-",
        ksm ? absl::StrFormat("%.2f", r.ksmd_cpu_s) : "-", ksm ? absl::StrFormat("%.1f", cpu_pct) : "-",
        ksm ? absl::StrFormat("%.1f", r.ksmd_steady_pct) : "-", ksm ? absl::StrCat(r.pages_sharing) : "-",
        ksm ? absl::StrCat(r.full_scans) : "-", r.ok_ticks, r.bad_ticks);
  }
  std::cout
      << "\nPSS summed over the clones' Firecracker processes; before = the first sample after the batch;\n"
         "settle = batch reply -> PSS within 2% over 5 s after two full ksmd passes; ksmd cpu = its CPU\n"
         "time over that, ksmd % = the same per second of settling, steady % = in the 10 s after.\n"
         "Target: uffd+ksm PSS <= 1.5x file.\n";
  return absl::OkStatus();
}

}  // namespace fcvm::bench
