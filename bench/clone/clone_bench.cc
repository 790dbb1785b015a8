// fcvm-clone-bench: cloning through fcvmd, measured against baselines taken
// in the same run. Suites (--suite, comma-separated):
//
//   latency  single clones and one batch, UFFD and File, warm pool off/on
//            (request -> running at the client; the batch's PSS)
//   fanout   one request of N clones against a bare driver (N Firecrackers
//            restoring the same snapshot, File backend, same parallelism, no
//            fcvmd), idle and active guests, 4 KiB and 2 MiB pages; fcvmd's
//            CPU time per clone
//   ksm      PSS of N File clones, N UFFD clones, and N UFFD clones under
//            fcvmd --ksm=manage once merged, with the time to settle and
//            ksmd's CPU
//   fork     live fork: the source's pause (a Diff snapshot) against a full
//            snapshot's of the same VM, fork latency against snapshot + clone
//
// Each suite starts its own fcvmd (temporary socket and state directory).
// Prints tables, or one JSON object with --json. A program, not a test; it
// needs root (Firecracker, huge pages, KSM settings).

#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/clone/suites.h"
#include "lib/base/flags.h"

namespace fcvm::bench {
namespace {

absl::StatusOr<std::vector<int>> Ints(const std::string& flag, const std::string& list) {
  std::vector<int> out;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(s, &v) || v < 1 || v > 1024) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", s, "' is not a count 1-1024"));
    }
    out.push_back(v);
  }
  return out;
}

int Main(int argc, char** argv) {
  Options o;
  if (const char* fc = std::getenv("FCVM_FIRECRACKER_BIN")) o.firecracker = fc;
  std::string isolation = "jailed,unjailed";
  std::string suites = "latency", fanout_n = "32,100", huge_n = "32", active_n = "32", ksm_rates = "1000/20";
  FlagParser flags(
      "fcvm-clone-bench [options]\n\nCloning through fcvmd against same-run baselines (needs Firecracker, "
      "root).");
  flags.String("fcvmd", &o.fcvmd, "fcvmd binary", "PATH");
  flags.String("guest", &o.guest, "test guest ELF", "PATH");
  flags.String("firecracker", &o.firecracker, "Firecracker binary (env FCVM_FIRECRACKER_BIN)", "PATH");
  flags.String("work-dir", &o.work_dir,
               "where fcvmd's state directory and the bare driver's VM directories go (default /tmp)", "DIR");
  flags.String("suite", &suites, "suites to run: latency, fanout, ksm, fork (default latency)", "LIST");
  flags.Int("runs", &o.runs, "latency: single-clone requests per configuration; fork: runs (default 10)");
  flags.Int("fork-write-ms", &o.fork_write_ms,
            "fork: how long the source writes between its full snapshot and the fork (default 1000)");
  flags.Int("fork-write-mib", &o.fork_write_mib, "fork: MiB the source guest writes each tick (default 2)");
  flags.Int("batch", &o.batch, "latency: clones in the batch request (default 32)");
  flags.Int("parallelism", &o.parallelism,
            "clones restored at once within a request, and by the bare "
            "driver (default 4)");
  flags.String(
      "isolation", &isolation,
      "latency, fanout: passes to run, each with its own fcvmd: jailed (the jailer beside Firecracker), "
      "unjailed (--no-jailer, as the fanout suite's bare driver); default both, the A/B",
      "LIST");
  flags.Int("warm-pool", &o.warm_pool, "latency: warm pool size for the 'warm' runs (default 4)");
  flags.String("fanout-n", &fanout_n, "fanout: batch sizes of idle guests (default 32,100)", "LIST");
  flags.String("huge-n", &huge_n, "fanout: batch sizes also run with 2 MiB pages (default 32; empty: none)",
               "LIST");
  flags.String("active-n", &active_n, "fanout: batch sizes of active guests (default 32; empty: none)",
               "LIST");
  flags.Int("fanout-runs", &o.fanout_runs, "fanout: runs of every configuration (default 3)");
  flags.Int("fanout-warm-pool", &o.fanout_warm_pool,
            "fanout: fcvmd's warm pool (default 0, as bare has none)");
  flags.Int("clone-threads", &o.clone_threads, "fanout: fcvmd's --clone-threads (default 32)");
  flags.Int("ksm-n", &o.ksm_n, "ksm: clones per batch (default 32)");
  flags.Int("ksm-tick-ms", &o.ksm_tick_ms, "ksm: the guests' tick (default 1000; 600000 = idle)");
  flags.String("ksm-rates", &ksm_rates,
               "ksm: pages_to_scan/sleep_millisecs settings to try (default 1000/20)", "LIST");
  flags.Int("ksm-timeout", &o.ksm_timeout_s, "ksm: seconds to wait for merging to settle (default 300)");
  flags.Bool("json", &o.json, "print JSON instead of tables");
  absl::StatusOr<std::vector<std::string>> rest =
      flags.Parse(std::vector<std::string>(argv + 1, argv + argc));
  if (!rest.ok()) {
    std::cerr << "fcvm-clone-bench: " << rest.status().message() << "\n";
    return 2;
  }
  if (flags.help_requested()) {
    std::cout << flags.Help();
    return 0;
  }
  o.suites = absl::StrSplit(suites, ',', absl::SkipEmpty());
  o.isolation = absl::StrSplit(isolation, ',', absl::SkipEmpty());
  for (const std::string& i : o.isolation) {
    if (i != "jailed" && i != "unjailed") {
      std::cerr << "fcvm-clone-bench: --isolation: '" << i << "' is not jailed or unjailed\n";
      return 2;
    }
  }
  absl::StatusOr<std::vector<int>> f = Ints("fanout-n", fanout_n), h = Ints("huge-n", huge_n),
                                   a = Ints("active-n", active_n);
  for (const auto* s : {&f, &h, &a}) {
    if (!s->ok()) {
      std::cerr << "fcvm-clone-bench: " << s->status().message() << "\n";
      return 2;
    }
  }
  o.fanout_n = *f;
  o.huge_n = *h;
  o.active_n = *a;
  o.ksm_rates = absl::StrSplit(ksm_rates, ',', absl::SkipEmpty());
  if (o.firecracker.empty() || access(o.firecracker.c_str(), X_OK) != 0) {
    std::cerr << "fcvm-clone-bench: no Firecracker binary: set FCVM_FIRECRACKER_BIN or --firecracker\n";
    return 2;
  }
  std::string json = "{";
  for (const std::string& suite : o.suites) {
    absl::Status st;
    std::string part;
    if (suite == "latency") {
      st = RunLatencySuite(o, &part);
    } else if (suite == "fanout") {
      st = RunFanoutSuite(o, &part);
    } else if (suite == "ksm") {
      st = RunKsmSuite(o, &part);
    } else if (suite == "fork") {
      st = RunForkSuite(o, &part);
    } else {
      std::cerr << "fcvm-clone-bench: unknown suite '" << suite << "' (want latency, fanout, ksm or fork)\n";
      return 2;
    }
    if (!st.ok()) {
      std::cerr << "fcvm-clone-bench: " << suite << ": " << st << "\n";
      return 1;
    }
    if (o.json) absl::StrAppend(&json, json.size() > 1 ? ",\n" : "", part);
  }
  if (o.json) std::cout << json << "}\n";
  return 0;
}

}  // namespace
}  // namespace fcvm::bench

int main(int argc, char** argv) { return fcvm::bench::Main(argc, argv); }
