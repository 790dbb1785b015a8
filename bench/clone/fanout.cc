// The fan-out suite: one CloneSnapshot request of N clones through fcvmd
// against a bare driver doing the least that restores N clones: N fresh
// Firecracker processes (lib/firecracker Vmm, no fcvmd), each loading the
// same snapshot files with the File backend, `parallelism` at a time.
//
// Guests: idle ones (a tick every 600 s: asleep in hlt between 10 ms timer
// interrupts) at each --fanout-n, so that the batch measures the clone path
// and not the guests; active ones (a tick every second, each checking 8 MiB
// and rewriting 2 MiB) at --active-n, reported separately; 2 MiB-page
// guests (UFFD only: Firecracker restores them only through a page server)
// at --huge-n. Configurations are interleaved run by run, so that the host's
// drift (others build on it) spreads over all of them.

#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/clone/suites.h"
#include "lib/base/file_util.h"
#include "lib/base/hugetlb.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"

namespace fcvm::bench {
namespace {

struct Batch {
  std::string guests;  // idle, active
  int n = 0;
  std::string config;                 // bare-file, fcvmd-file, fcvmd-uffd, fcvmd-uffd-2m
  std::vector<double> walls;          // ms, one per run
  std::vector<double> cpu_per_clone;  // ms: fcvmd's (bare: the driver's own)
  std::vector<double> clone_p50;      // ms: each clone's own request -> running (bare: launch + load)
  std::vector<double> load_p50;       // ms: /snapshot/load
  std::vector<double> start_p50;      // ms: process start -> API ready
  std::vector<double> prefetch_p50;   // ms: working-set prefetch before resume (UFFD)
  int failed = 0;                     // over all runs
  int not_running = 0;                // reported running but no live process
};

double SelfCpuMs() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  auto ms = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) * 1e3 + tv.tv_usec / 1e3; };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

bool Alive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat")).value_or("");
  size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// N Firecrackers restoring `snap_dir`'s files with the File backend.
absl::Status BareRun(const firecracker::FirecrackerBinary& binary, const std::string& work_dir,
                     const std::string& snap_dir, int n, int p, Batch* out) {
  std::string tmpl = work_dir + "/fcvm-bare-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return ErrnoError(absl::StrCat("mkdtemp ", tmpl));
  const std::string work = tmpl;
  std::vector<std::unique_ptr<firecracker::Vmm>> vmms(n);
  std::vector<absl::Status> errors(n);
  std::vector<double> per_clone(n), loads(n), starts(n);
  std::atomic<int> next{0};
  firecracker::SnapshotLoad load;
  load.snapshot_path = snap_dir + "/vmstate";
  load.backend = firecracker::MemBackend::kFile;
  load.backend_path = snap_dir + "/memory";
  load.resume_vm = true;
  auto worker = [&] {
    for (int i; (i = next.fetch_add(1)) < n;) {
      absl::Time t0 = absl::Now();
      absl::StatusOr<std::unique_ptr<firecracker::Vmm>> vmm = firecracker::Vmm::Launch(
          binary, {.vm_dir = absl::StrCat(work, "/", i), .id = absl::StrCat("bare-", i)});
      if (!vmm.ok()) {
        errors[i] = vmm.status();
        continue;
      }
      absl::Time t1 = absl::Now();
      errors[i] = (*vmm)->LoadSnapshot(load, absl::Seconds(60));
      absl::Time t2 = absl::Now();
      per_clone[i] = absl::ToDoubleMilliseconds(t2 - t0);
      loads[i] = absl::ToDoubleMilliseconds(t2 - t1);
      starts[i] = absl::ToDoubleMilliseconds((*vmm)->startup_time());
      vmms[i] = *std::move(vmm);
    }
  };
  double cpu0 = SelfCpuMs();
  absl::Time t0 = absl::Now();
  std::vector<std::thread> threads;
  for (int w = 1; w < p; ++w) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
  double wall = absl::ToDoubleMilliseconds(absl::Now() - t0);
  double cpu = SelfCpuMs() - cpu0;
  std::vector<double> ok_clone, ok_load, ok_start;
  for (int i = 0; i < n; ++i) {
    if (!errors[i].ok()) {
      ++out->failed;
      std::cerr << "bare clone " << i << ": " << errors[i] << "\n";
      continue;
    }
    if (!vmms[i]->CheckRunning().ok()) ++out->not_running;
    ok_clone.push_back(per_clone[i]);
    ok_load.push_back(loads[i]);
    ok_start.push_back(starts[i]);
  }
  out->walls.push_back(wall);
  out->cpu_per_clone.push_back(cpu / n);
  out->clone_p50.push_back(Median(ok_clone));
  out->load_p50.push_back(Median(ok_load));
  out->start_p50.push_back(Median(ok_start));
  out->prefetch_p50.push_back(0);
  vmms.clear();  // kills them
  return RemoveTree(work);
}

absl::Status FcvmdRun(Fcvmd& d, const std::string& snap, int n, int p, fcvm::v1::MemoryBackend backend,
                      Batch* out) {
  fcvm::v1::CloneSnapshotRequest req;
  req.set_snapshot_ref(snap);
  req.set_count(static_cast<uint32_t>(n));
  req.set_memory_backend(backend);
  req.set_parallelism(static_cast<uint32_t>(p));
  fcvm::v1::CloneSnapshotResponse resp;
  double cpu0 = CpuMs(d.pid());
  absl::Time t0 = absl::Now();
  grpc::Status st = d.snaps().CloneSnapshot(Ctx().get(), req, &resp);
  double wall = absl::ToDoubleMilliseconds(absl::Now() - t0);
  double cpu = CpuMs(d.pid()) - cpu0;
  RETURN_IF_ERROR(Check(st, "clone"));
  std::vector<double> totals, loads, starts, prefetches;
  for (const auto& c : resp.clones()) {
    if (c.state() != fcvm::v1::VM_STATE_RUNNING) {
      ++out->failed;
      if (out->failed <= 3) std::cerr << "clone " << c.name() << ": " << c.error() << "\n";
      continue;
    }
    if (!Alive(c.pid())) ++out->not_running;
    totals.push_back(Ms(c.timings().total()));
    loads.push_back(Ms(c.timings().load()));
    starts.push_back(Ms(c.timings().process_ready()));
    prefetches.push_back(Ms(c.timings().prefetch()));
  }
  out->walls.push_back(wall);
  out->cpu_per_clone.push_back(cpu / n);
  out->clone_p50.push_back(Median(totals));
  out->load_p50.push_back(Median(loads));
  out->start_p50.push_back(Median(starts));
  out->prefetch_p50.push_back(Median(prefetches));
  return DeleteClones(d, resp);
}

// Adds the huge pages the 2 MiB runs need to the pool and touches them once,
// untimed: the first use of freshly reserved pages is much slower on this
// kind of host (its own host backs the memory on first touch).
absl::StatusOr<HugePageReservation> ReserveHugePages(uint64_t pages) {
  ASSIGN_OR_RETURN(HugePageReservation r, HugePageReservation::Add(pages));
  const uint64_t len = r.pages() * r.page_size();
  absl::Time t0 = absl::Now();
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (m != MAP_FAILED) {
    for (uint64_t off = 0; off < len; off += 4096) static_cast<volatile uint8_t*>(m)[off] = 1;
    munmap(m, len);
  }
  std::cerr << "fanout: " << r.pages() << " huge pages added to the pool and touched once in "
            << absl::FormatDuration(absl::Now() - t0) << "\n";
  return r;
}

}  // namespace

absl::Status RunFanoutSuite(const Options& o, std::string* json) {
  const int p = static_cast<int>(o.parallelism);
  ASSIGN_OR_RETURN(firecracker::FirecrackerBinary binary,
                   firecracker::FirecrackerBinary::Probe(o.firecracker));
  std::string load_before = LoadAverage();

  int max_huge = 0;
  for (int n : o.huge_n) max_huge = std::max(max_huge, n);
  std::optional<HugePageReservation> pool;
  if (max_huge > 0) {
    // Each fcvmd's golden VM and max_huge clones of 128 MiB (fcvmd checks count x
    // guest memory up front), and some slack.
    absl::StatusOr<HugePageReservation> r =
        ReserveHugePages(64 * (static_cast<uint64_t>(max_huge) + o.isolation.size()) + 16);
    if (r.ok()) {
      pool = std::move(*r);
    } else {
      std::cerr << "fanout: no 2 MiB runs: " << r.status() << "\n";
      max_huge = 0;
    }
  }

  // One fcvmd per --isolation mode (jailed: fcvmd's default; unjailed:
  // --no-jailer, like the bare driver); a jailed fcvmd's configurations are
  // named "-jailed".
  struct Daemon {
    std::unique_ptr<Fcvmd> d;
    std::string suffix;
    fcvm::v1::Snapshot idle;
    std::optional<fcvm::v1::Snapshot> huge, active;
  };
  std::vector<Daemon> daemons;
  for (const std::string& isolation : o.isolation) {
    std::vector<std::string> args = {"--warm-pool", absl::StrCat(o.fanout_warm_pool), "--clone-threads",
                                     absl::StrCat(o.clone_threads)};
    if (isolation == "unjailed") args.push_back("--no-jailer");
    Daemon dm;
    dm.suffix = isolation == "jailed" ? "-jailed" : "";
    ASSIGN_OR_RETURN(dm.d, Fcvmd::Start(o, args));
    ASSIGN_OR_RETURN(dm.idle, PrepareSnapshot(*dm.d, o, {.name = "idle", .tick_ms = 600000}));
    if (max_huge > 0) {
      ASSIGN_OR_RETURN(dm.huge,
                       PrepareSnapshot(*dm.d, o, {.name = "idle-2m", .tick_ms = 600000, .huge_pages = true}));
    }
    if (!o.active_n.empty()) {
      ASSIGN_OR_RETURN(dm.active, PrepareSnapshot(*dm.d, o, {.name = "active", .tick_ms = 1000}));
    }
    daemons.push_back(std::move(dm));
  }

  std::map<std::tuple<std::string, int, std::string>, Batch> batches;
  std::vector<std::tuple<std::string, int, std::string>> order;
  auto batch = [&](const std::string& guests, int n, const std::string& config) -> Batch& {
    auto key = std::make_tuple(guests, n, config);
    auto [it, added] = batches.try_emplace(key);
    if (added) {
      it->second.guests = guests;
      it->second.n = n;
      it->second.config = config;
      order.push_back(key);
    }
    return it->second;
  };
  // `which` picks each daemon's snapshot of these guests (idle or active).
  auto one_set = [&](const std::string& guests, int n, const std::string& snap_dir,
                     auto which) -> absl::Status {
    RETURN_IF_ERROR(BareRun(binary, o.work_dir, snap_dir, n, p, &batch(guests, n, "bare-file")));
    absl::SleepFor(absl::Milliseconds(500));  // let the kills and reaps settle (untimed)
    for (Daemon& dm : daemons) {
      for (fcvm::v1::MemoryBackend backend : {fcvm::v1::MEMORY_BACKEND_FILE, fcvm::v1::MEMORY_BACKEND_UFFD}) {
        std::string config =
            absl::StrCat("fcvmd-", backend == fcvm::v1::MEMORY_BACKEND_FILE ? "file" : "uffd", dm.suffix);
        RETURN_IF_ERROR(FcvmdRun(*dm.d, which(dm).id(), n, p, backend, &batch(guests, n, config)));
        absl::SleepFor(absl::Milliseconds(500));
      }
    }
    if (!o.json) std::cerr << "." << std::flush;
    return absl::OkStatus();
  };
  for (int run = 0; run < o.fanout_runs; ++run) {
    for (int n : o.fanout_n) {
      bool with_huge = max_huge > 0 && std::find(o.huge_n.begin(), o.huge_n.end(), n) != o.huge_n.end();
      RETURN_IF_ERROR(one_set("idle", n, daemons[0].idle.path(),
                              [](Daemon& dm) -> const fcvm::v1::Snapshot& { return dm.idle; }));
      if (with_huge) {
        // Bare Firecracker cannot restore a 2 MiB guest with the File backend:
        // these rows compare against the 4 KiB bare run just before.
        for (Daemon& dm : daemons) {
          std::string config = absl::StrCat("fcvmd-uffd-2m", dm.suffix);
          RETURN_IF_ERROR(
              FcvmdRun(*dm.d, dm.huge->id(), n, p, fcvm::v1::MEMORY_BACKEND_UFFD, &batch("idle", n, config)));
          absl::SleepFor(absl::Milliseconds(500));
        }
      }
    }
  }
  for (int run = 0; run < o.fanout_runs && !o.active_n.empty(); ++run) {
    for (int n : o.active_n) {
      RETURN_IF_ERROR(one_set("active", n, daemons[0].active->path(),
                              [](Daemon& dm) -> const fcvm::v1::Snapshot& { return *dm.active; }));
    }
  }
  std::string load_after = LoadAverage();
  daemons.clear();
  pool.reset();

  // Ratios against the bare driver of the same guests and N.
  auto bare_of = [&](const Batch& b) {
    return Median(batches[std::make_tuple(b.guests, b.n, "bare-file")].walls);
  };
  if (o.json) {
    absl::StrAppend(json, "\"fanout\": {\"load_before\": \"", load_before, "\", \"load_after\": \"",
                    load_after, "\", \"parallelism\": ", p, ", \"runs\": ", o.fanout_runs, ", \"rows\": [\n");
    for (size_t i = 0; i < order.size(); ++i) {
      const Batch& b = batches[order[i]];
      double wall = Median(b.walls);
      absl::StrAppend(
          json,
          absl::StrFormat(
              "  {\"guests\": \"%s\", \"n\": %d, \"config\": \"%s\", \"wall_ms_median\": %.1f, "
              "\"walls_ms\": [%s], \"vs_bare\": %.3f, \"cpu_per_clone_ms\": %.2f, "
              "\"clone_p50_ms\": %.2f, \"start_p50_ms\": %.2f, \"load_p50_ms\": %.2f, \"prefetch_p50_ms\": "
              "%.2f, \"failed\": %d, "
              "\"not_running\": %d}%s\n",
              b.guests, b.n, b.config, wall,
              absl::StrJoin(b.walls, ", ",
                            [](std::string* s, double v) { absl::StrAppend(s, absl::StrFormat("%.1f", v)); }),
              wall / bare_of(b), Median(b.cpu_per_clone), Median(b.clone_p50), Median(b.start_p50),
              Median(b.load_p50), Median(b.prefetch_p50), b.failed, b.not_running,
              i + 1 < order.size() ? "," : ""));
    }
    absl::StrAppend(json, "]}");
    return absl::OkStatus();
  }
  std::cout << "\nfan-out: one request of N clones (fcvmd) vs N Firecrackers restored by a bare driver, " << p
            << " at a time; medians of " << o.fanout_runs << " runs (load " << load_before << " -> "
            << load_after << ")\n"
            << absl::StrFormat("%-6s %4s %-18s %9s %-26s %7s %10s %10s %9s %9s %9s %6s %7s\n", "guests", "N",
                               "config", "wall ms", "(runs)", "vs bare", "cpu/clone", "clone p50",
                               "start p50", "load p50", "prefetch", "failed", "stopped");
  for (const auto& key : order) {
    const Batch& b = batches[key];
    double wall = Median(b.walls);
    std::cout << absl::StrFormat(
        "%-6s %4d %-18s %9.1f %-26s %6.2fx %10.2f %10.2f %9.2f %9.2f %9.2f %6d %7d\n", b.guests, b.n,
        b.config, wall,
        absl::StrJoin(b.walls, " ",
                      [](std::string* s, double v) { absl::StrAppend(s, absl::StrFormat("%.0f", v)); }),
        wall / bare_of(b), Median(b.cpu_per_clone), Median(b.clone_p50), Median(b.start_p50),
        Median(b.load_p50), Median(b.prefetch_p50), b.failed, b.not_running);
  }
  std::cout
      << "\nwall = request sent -> reply (fcvmd) or first launch -> last load done (bare); cpu/clone =\n"
         "fcvmd's own CPU time (its threads, the page server's included) per clone, or the bare driver's;\n"
         "clone p50 = each clone's own start -> running; stopped = reported running without a live process.\n"
         "Targets: idle fcvmd-file <= 1.2x bare, fcvmd-uffd <= 1.3x bare at every N; 0 failed.\n";
  return absl::OkStatus();
}

}  // namespace fcvm::bench
