// fc_restore_bench: time from PUT /snapshot/load to the guest's first tick
// when the test guest's memory is on 4 KiB pages and on 2 MiB hugetlbfs pages
// ("huge_pages": "2M"), restored through lib/uffd's PageServer on demand and
// with prefetch-then-resume, with the real Firecracker. Prints a table and
// one JSON line of medians, and the 2 MiB / 4 KiB ratios.
//
//   FCVM_FIRECRACKER_BIN=/path/to/firecracker fc_restore_bench [runs]
//
// Per page size: one golden VM (128 MiB, the e2e tests' guest arguments:
// 8 MiB READ + 2 MiB WRITE area, 250 ms ticks) is booted, paused after its
// first tick and snapshotted (Full); one recording clone runs two ticks to
// record the working set. Then, `runs` times, alternating page sizes so that
// the machine's drift hits both alike: an on-demand clone (resume_vm at
// load) and a prefetch clone (loaded paused, WaitPrefetchDone, resumed).
// The clock starts just before /snapshot/load and stops at the first OK
// tick line on the console; launching Firecracker and the page server's
// listener are outside it. Needs root for the huge pages it adds to the
// pool for the run (given back at the end).

#include <signal.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/base/hugetlb.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "lib/uffd/page_server.h"
#include "tests/e2e/e2e_util.h"

namespace fcvm {
namespace {

using firecracker::FirecrackerBinary;
using firecracker::MemBackend;
using firecracker::SnapshotLoad;
using firecracker::Vmm;

constexpr uint64_t kHuge = 2 << 20;

struct Golden {
  std::string name;  // "4k" or "2m"
  std::string vmstate, mem;
  uint64_t last_tick = 0;
  double tick_work_ms = 0;  // the golden's own first tick: its work (us=), memory in place
};

struct Sample {
  double load_ms = 0, first_tick_ms = 0;
  double resume_ms = 0;     // prefetch: load returned -> prefetch done and VM resumed
  double tick_work_ms = 0;  // the guest's own measure of its first tick's work (us=), faults included
  uint64_t faults = 0, prefetched_pages = 0;
};

// The "us=" of a tick line, in ms; 0 if absent.
double TickWorkMs(const std::string& line) {
  size_t at = line.find(" us=");
  return at == std::string::npos ? 0 : std::atof(line.c_str() + at + 4) / 1000;
}

std::map<std::string, std::vector<Sample>> g_samples;  // "2m ondemand" -> runs

absl::StatusOr<Golden> MakeGolden(const FirecrackerBinary& bin, const std::string& dir, bool huge) {
  Golden g;
  g.name = huge ? "2m" : "4k";
  ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, {.vm_dir = dir + "/golden-" + g.name,
                                                               .id = "golden-" + g.name,
                                                               .parent_death_signal = SIGKILL}));
  firecracker::BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
  if (huge) spec.machine.huge_pages = "2M";
  RETURN_IF_ERROR(vmm->Boot(spec));
  ASSIGN_OR_RETURN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  ASSIGN_OR_RETURN(e2e::Tick first, e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, absl::Seconds(30)));
  g.tick_work_ms = TickWorkMs(first.line);
  RETURN_IF_ERROR(vmm->api().Pause());
  g.vmstate = dir + "/" + g.name + ".vmstate";
  g.mem = dir + "/" + g.name + ".mem";
  RETURN_IF_ERROR(vmm->CreateSnapshot({.snapshot_path = g.vmstate, .mem_file_path = g.mem}));
  g.last_tick = e2e::LastTick(vmm->console());
  RETURN_IF_ERROR(vmm->Kill().status());
  return g;
}

uffd::PageStats ListenerTotal(uffd::PageServer& server, uffd::ListenerId id) {
  for (const uffd::ListenerStats& l : server.GetStats().listeners) {
    if (l.id == id) return l.stats;
  }
  return {};
}

// One clone of `g`: policy kNone (on demand, resumed by the load), kRecord
// (the same, runs two ticks) or kPrefetch (loaded paused, resumed after the
// prefetch).
absl::StatusOr<Sample> Restore(const FirecrackerBinary& bin, uffd::PageServer& server, const Golden& g,
                               const std::string& dir, int run, uffd::ClonePolicy policy) {
  const std::string name = absl::StrCat(g.name, "-", uffd::ClonePolicyName(policy), "-", run);
  uffd::ListenerSpec spec;
  spec.socket_path = dir + "/" + name + ".sock";
  spec.files.mem_file_path = g.mem;
  spec.files.working_set_path = g.mem + ".wset";
  spec.policy = policy;
  spec.paused_during_prefetch = policy == uffd::ClonePolicy::kPrefetch;
  spec.tag = name;
  ASSIGN_OR_RETURN(
      std::unique_ptr<Vmm> vmm,
      Vmm::Launch(bin, {.vm_dir = dir + "/" + name, .id = name, .parent_death_signal = SIGKILL}));
  ASSIGN_OR_RETURN(uffd::ListenerId id, server.AddListener(spec));
  const bool prefetch = policy == uffd::ClonePolicy::kPrefetch;
  SnapshotLoad load{.snapshot_path = g.vmstate,
                    .backend = MemBackend::kUffd,
                    .backend_path = spec.socket_path,
                    .resume_vm = !prefetch};
  Sample s;
  absl::Time t0 = absl::Now();
  absl::Status st = vmm->LoadSnapshot(load);
  absl::Time t1 = absl::Now();
  if (st.ok() && prefetch) {
    st = server.WaitPrefetchDone(id, absl::Now() + absl::Seconds(30));
    if (st.ok()) st = vmm->api().Resume();
  }
  absl::Time t_resumed = absl::Now();
  absl::Time t2 = t_resumed;
  if (st.ok()) {
    absl::StatusOr<e2e::Tick> t = e2e::WaitForOkTicks(vmm->console(), 0, 1, g.last_tick, absl::Seconds(30));
    t2 = absl::Now();
    st = t.status();
    if (t.ok()) s.tick_work_ms = TickWorkMs(t->line);
    if (t.ok() && policy == uffd::ClonePolicy::kRecord) {
      st = e2e::WaitForOkTicks(vmm->console(), 0, 2, g.last_tick, absl::Seconds(30)).status();
    }
  }
  s.load_ms = absl::ToDoubleMilliseconds(t1 - t0);
  s.resume_ms = absl::ToDoubleMilliseconds(t_resumed - t1);
  s.first_tick_ms = absl::ToDoubleMilliseconds(t2 - t0);
  uffd::PageStats ps = ListenerTotal(server, id);
  s.faults = ps.faults;
  s.prefetched_pages = ps.prefetched_pages;
  if (!st.ok()) st = Annotate(st, absl::StrCat(name, vmm->RecentOutput()));
  (void)vmm->Kill();
  // Ends the session; a recorder's working set is written as it ends and
  // flushed by the next AddListener.
  (void)server.RemoveListener(id);
  RETURN_IF_ERROR(st);
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  std::string missing = e2e::MissingPrerequisite();
  if (!missing.empty()) {
    std::fprintf(stderr, "fc_restore_bench: %s\n", missing.c_str());
    return 2;
  }
  absl::StatusOr<FirecrackerBinary> bin = FirecrackerBinary::Probe(e2e::FirecrackerPath());
  if (!bin.ok()) {
    std::fprintf(stderr, "fc_restore_bench: %s\n", bin.status().ToString().c_str());
    return 1;
  }
  // The golden VM, then one clone at a time: 64 pages each, and slack.
  absl::StatusOr<HugePageReservation> pool = HugePageReservation::Add(2 * 64 + 16);
  if (!pool.ok()) {
    std::fprintf(stderr, "fc_restore_bench: %s\n", pool.status().ToString().c_str());
    return 2;
  }
  {
    // The first use of freshly reserved huge pages is much slower here: touch
    // them once, untimed.
    const uint64_t len = pool->pages() * kHuge;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m != MAP_FAILED) {
      for (uint64_t off = 0; off < len; off += 4096) static_cast<volatile char*>(m)[off] = 1;
      munmap(m, len);
    }
  }
  absl::StatusOr<std::unique_ptr<uffd::PageServer>> server = uffd::PageServer::Create({.threads = 2});
  if (!server.ok()) {
    std::fprintf(stderr, "fc_restore_bench: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::string load_before;
  {
    FILE* f = std::fopen("/proc/loadavg", "r");
    char buf[64] = {};
    if (f != nullptr && std::fgets(buf, sizeof(buf), f) != nullptr) load_before = std::string(buf, 14);
    if (f != nullptr) std::fclose(f);
  }
  e2e::TempDir dir;
  std::vector<Golden> goldens;
  for (bool huge : {false, true}) {
    absl::StatusOr<Golden> g = MakeGolden(*bin, dir.path(), huge);
    if (!g.ok()) {
      std::fprintf(stderr, "fc_restore_bench: golden: %s\n", g.status().ToString().c_str());
      return 1;
    }
    absl::StatusOr<Sample> rec = Restore(*bin, **server, *g, dir.path(), 0, uffd::ClonePolicy::kRecord);
    if (!rec.ok()) {
      std::fprintf(stderr, "fc_restore_bench: record: %s\n", rec.status().ToString().c_str());
      return 1;
    }
    goldens.push_back(*g);
  }
  for (int r = 1; r <= runs; ++r) {
    for (const Golden& g : goldens) {
      for (uffd::ClonePolicy policy : {uffd::ClonePolicy::kNone, uffd::ClonePolicy::kPrefetch}) {
        absl::StatusOr<Sample> s = Restore(*bin, **server, g, dir.path(), r, policy);
        if (!s.ok()) {
          std::fprintf(stderr, "fc_restore_bench: run %d: %s\n", r, s.status().ToString().c_str());
          return 1;
        }
        g_samples[absl::StrCat(g.name, " ", policy == uffd::ClonePolicy::kNone ? "ondemand" : "prefetch")]
            .push_back(*s);
      }
    }
  }
  (*server)->Stop();
  std::printf(
      "Firecracker %s, guest %d MiB (%s), %d runs, loadavg before %s: /snapshot/load -> first OK tick\n",
      bin->version().ToString().c_str(), e2e::kGuestMemMib, e2e::kGuestBootArgs, runs, load_before.c_str());
  for (const Golden& g : goldens) {
    std::printf("golden %s: its first tick's work (us=) %.1f ms, all memory in place\n", g.name.c_str(),
                g.tick_work_ms);
  }
  std::printf("%-14s %9s %11s %10s %14s %8s %8s %8s %11s\n", "restore", "load_ms", "prefetch_ms",
              "tick_us_ms", "first_tick_ms", "min", "max", "faults", "prefetched");
  std::string json = "{";
  std::map<std::string, double> med;
  for (const char* key : {"4k ondemand", "2m ondemand", "4k prefetch", "2m prefetch"}) {
    const std::vector<Sample>& v = g_samples[key];
    std::vector<double> load, tick, faults, pre, resume, work;
    for (const Sample& s : v) {
      load.push_back(s.load_ms);
      tick.push_back(s.first_tick_ms);
      faults.push_back(static_cast<double>(s.faults));
      pre.push_back(static_cast<double>(s.prefetched_pages));
      resume.push_back(s.resume_ms);
      work.push_back(s.tick_work_ms);
    }
    med[key] = Median(tick);
    std::printf("%-14s %9.1f %11.1f %10.1f %14.1f %8.1f %8.1f %8.0f %11.0f\n", key, Median(load),
                Median(resume), Median(work), Median(tick), *std::min_element(tick.begin(), tick.end()),
                *std::max_element(tick.begin(), tick.end()), Median(faults), Median(pre));
    std::string k = key;
    std::replace(k.begin(), k.end(), ' ', '_');
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"", k,
                    "_load_ms\":", absl::StrFormat("%.1f", Median(load)), ",\"", k,
                    "_tick_work_ms\":", absl::StrFormat("%.1f", Median(work)), ",\"", k,
                    "_first_tick_ms\":", absl::StrFormat("%.1f", Median(tick)));
  }
  const double od = med["2m ondemand"] / med["4k ondemand"], pf = med["2m prefetch"] / med["4k prefetch"];
  std::printf(
      "(load_ms: the /snapshot/load call; prefetch_ms: from its return to the prefetch done and the VM "
      "resumed;\n"
      " tick_us_ms: the guest's own measure of the first tick's work, page faults included; first_tick_ms:\n"
      " /snapshot/load -> first OK tick line: median, min, max; faults: page-fault events the page server\n"
      " served; prefetched: 4 KiB pages installed before resume)\n");
  std::printf("2m / 4k, load -> first tick: on demand %.2fx, prefetch %.2fx\n", od, pf);
  absl::StrAppend(&json, ",\"ratio_ondemand\":", absl::StrFormat("%.3f", od),
                  ",\"ratio_prefetch\":", absl::StrFormat("%.3f", pf), "}");
  std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace fcvm

int main(int argc, char** argv) { return fcvm::Main(argc, argv); }
