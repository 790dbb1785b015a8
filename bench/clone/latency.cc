// The latency suite: single clones (request sent -> running, at the client)
// and one request of --batch clones, UFFD and File, warm pool off and on,
// with the batch's summed PSS.

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/clone/suites.h"
#include "lib/base/status.h"

namespace fcvm::bench {
namespace {

struct Row {
  std::string isolation;  // "jailed" or "unjailed"
  std::string backend;
  bool warm = false;
  std::string kind;  // "single" or "batch"
  int n = 0;
  double p50_ms = 0, p99_ms = 0, total_ms = 0;  // total: batch wall time (client)
  double server_p50_ms = 0, load_p50_ms = 0, prefetch_p50_ms = 0;
  uint64_t pss_mib = 0;
  int failed = 0;
  int pooled = 0;
};

absl::StatusOr<Row> Measure(Fcvmd& d, const Options& o, const std::string& snap,
                            fcvm::v1::MemoryBackend backend, bool warm, bool batch) {
  Row row;
  row.backend = backend == fcvm::v1::MEMORY_BACKEND_FILE ? "file" : "uffd";
  row.warm = warm;
  row.kind = batch ? "batch" : "single";
  std::vector<double> client, server, load, prefetch;
  int rounds = batch ? 1 : static_cast<int>(o.runs);
  for (int r = 0; r < rounds; ++r) {
    if (warm) absl::SleepFor(absl::Milliseconds(400));  // let the pool refill (not timed)
    fcvm::v1::CloneSnapshotRequest req;
    req.set_snapshot_ref(snap);
    req.set_count(batch ? static_cast<uint32_t>(o.batch) : 1);
    req.set_memory_backend(backend);
    req.set_parallelism(static_cast<uint32_t>(o.parallelism));
    fcvm::v1::CloneSnapshotResponse resp;
    absl::Time t0 = absl::Now();
    grpc::Status st = d.snaps().CloneSnapshot(Ctx().get(), req, &resp);
    double wall = absl::ToDoubleMilliseconds(absl::Now() - t0);
    RETURN_IF_ERROR(Check(st, "clone"));
    if (batch) {
      row.total_ms = wall;
      for (const auto& c : resp.clones()) {
        if (c.pid() > 0) row.pss_mib += PssKib(c.pid());
      }
      row.pss_mib /= 1024;
    } else {
      client.push_back(wall);
    }
    for (const auto& c : resp.clones()) {
      if (c.state() == fcvm::v1::VM_STATE_FAILED) {
        ++row.failed;
        continue;
      }
      row.pooled += c.timings().from_warm_pool() ? 1 : 0;
      server.push_back(Ms(c.timings().total()));
      load.push_back(Ms(c.timings().load()));
      prefetch.push_back(Ms(c.timings().prefetch()));
    }
    RETURN_IF_ERROR(DeleteClones(d, resp));
  }
  row.n = batch ? static_cast<int>(o.batch) : rounds;
  // Single clones: the client-measured latency; batch: per-clone totals
  // measured by fcvmd (request received -> that clone running).
  std::vector<double>& lat = batch ? server : client;
  row.p50_ms = Percentile(lat, 0.5);
  row.p99_ms = Percentile(lat, 0.99);
  row.server_p50_ms = Percentile(server, 0.5);
  row.load_p50_ms = Percentile(load, 0.5);
  row.prefetch_p50_ms = Percentile(prefetch, 0.5);
  return row;
}

}  // namespace

absl::Status RunLatencySuite(const Options& o, std::string* json) {
  std::vector<Row> rows;
  std::string load_before = LoadAverage();
  for (const std::string& isolation : o.isolation) {
    for (bool warm : {false, true}) {
      std::vector<std::string> args = {"--warm-pool", absl::StrCat(warm ? o.warm_pool : 0)};
      if (isolation == "unjailed") args.push_back("--no-jailer");
      ASSIGN_OR_RETURN(std::unique_ptr<Fcvmd> d, Fcvmd::Start(o, args));
      ASSIGN_OR_RETURN(fcvm::v1::Snapshot snap,
                       PrepareSnapshot(*d, o, {.name = "bench-base", .tick_ms = 1000}));
      for (auto backend : {fcvm::v1::MEMORY_BACKEND_UFFD, fcvm::v1::MEMORY_BACKEND_FILE}) {
        for (bool batch : {false, true}) {
          ASSIGN_OR_RETURN(Row row, Measure(*d, o, snap.id(), backend, warm, batch));
          row.isolation = isolation;
          rows.push_back(row);
          if (!o.json) std::cerr << "." << std::flush;
        }
      }
    }
  }
  // The A/B: each jailed row's p50 over the same unjailed row's.
  struct Ratio {
    std::string what;
    double p50 = 0;
  };
  std::vector<Ratio> ratios;
  for (const Row& j : rows) {
    if (j.isolation != "jailed") continue;
    for (const Row& u : rows) {
      if (u.isolation == "unjailed" && u.backend == j.backend && u.warm == j.warm && u.kind == j.kind &&
          u.p50_ms > 0) {
        ratios.push_back(
            {absl::StrCat(j.backend, " warm ", j.warm ? "on" : "off", " ", j.kind), j.p50_ms / u.p50_ms});
      }
    }
  }
  std::string load_after = LoadAverage();
  if (o.json) {
    absl::StrAppend(json, "\"latency\": {\"load_before\": \"", load_before, "\", \"load_after\": \"",
                    load_after, "\", \"rows\": [\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      absl::StrAppend(
          json,
          absl::StrFormat(
              "  {\"isolation\": \"%s\", \"backend\": \"%s\", \"warm_pool\": %s, \"kind\": \"%s\", \"n\": "
              "%d, \"p50_ms\": %.2f, "
              "\"p99_ms\": %.2f, \"batch_wall_ms\": %.1f, \"server_p50_ms\": %.2f, \"load_p50_ms\": %.2f, "
              "\"prefetch_p50_ms\": %.2f, \"pss_mib\": %d, \"pooled\": %d, \"failed\": %d}%s\n",
              r.isolation, r.backend, r.warm ? "true" : "false", r.kind, r.n, r.p50_ms, r.p99_ms, r.total_ms,
              r.server_p50_ms, r.load_p50_ms, r.prefetch_p50_ms, r.pss_mib, r.pooled, r.failed,
              i + 1 < rows.size() ? "," : ""));
    }
    absl::StrAppend(json, "], \"jailed_over_unjailed_p50\": {");
    for (size_t i = 0; i < ratios.size(); ++i) {
      absl::StrAppend(json, absl::StrFormat("\"%s\": %.3f%s", ratios[i].what, ratios[i].p50,
                                            i + 1 < ratios.size() ? ", " : ""));
    }
    absl::StrAppend(json, "}}");
    return absl::OkStatus();
  }
  std::cout << "\nlatency (load " << load_before << " -> " << load_after << ")\n"
            << absl::StrFormat("%-8s %-7s %-5s %-7s %4s %9s %9s %10s %9s %9s %9s %8s %6s %6s\n", "jail",
                               "backend", "warm", "kind", "n", "p50 ms", "p99 ms", "wall ms", "srv p50",
                               "load p50", "pref p50", "PSS MiB", "pooled", "failed");
  for (const Row& r : rows) {
    std::cout << absl::StrFormat("%-8s %-7s %-5s %-7s %4d %9.2f %9.2f %10s %9.2f %9.2f %9.2f %8s %6d %6d\n",
                                 r.isolation, r.backend, r.warm ? "on" : "off", r.kind, r.n, r.p50_ms,
                                 r.p99_ms, r.kind == "batch" ? absl::StrFormat("%.1f", r.total_ms) : "-",
                                 r.server_p50_ms, r.load_p50_ms, r.prefetch_p50_ms,
                                 r.kind == "batch" ? absl::StrCat(r.pss_mib) : "-", r.pooled, r.failed);
  }
  std::cout
      << "\nsingle: p50/p99 of request sent -> clone running, measured by the client over --runs requests;\n"
         "batch: one request of --batch clones; p50/p99 of each clone's request -> running time (fcvmd),\n"
         "wall = the whole request at the client; PSS = the batch's Firecracker processes summed.\n";
  if (!ratios.empty()) {
    std::cout << "\njailed / unjailed p50, same run:\n";
    for (const Ratio& r : ratios) std::cout << absl::StrFormat("  %-22s %.2fx\n", r.what, r.p50);
  }
  return absl::OkStatus();
}

}  // namespace fcvm::bench
