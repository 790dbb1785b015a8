// fcvm-net-bench: how long per-VM networking takes.
//
// Measures, in one run and on the same machine:
//   baseline    create + delete a bare named network namespace (what any
//               namespace-per-VM design pays at least), and the same with a
//               veth pair into it (the kernel's share of a VM network)
//   setup       NetworkManager::Setup of one VM (namespace, tap, veth,
//               addresses, route, sysctl, nft rules), one VM alive
//   teardown    NetworkManager::Teardown of it
//   setup+port  Setup with one published port (adds the host nft table)
//   setup@64 / teardown@64   the same for each of 64 VMs alive at once,
//               one after the other, plus the wall time for all 64
//   setup@64x2  64 VMs set up from two threads at once (wall time only)
// and prints a table (or JSON with --json): median, p99, and the median's
// ratio to the baseline's median.
//
// Needs root. Uses its own prefix ("fcvmb"), pool and state dir, leaves the
// host's ip_forward alone, and removes everything it made.

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "lib/base/file_util.h"
#include "lib/base/flags.h"
#include "lib/base/status.h"
#include "lib/net/netlink.h"
#include "lib/net/netns.h"
#include "lib/net/network_manager.h"
#include "nlohmann/json.hpp"

namespace fcvm::net {
namespace {

struct Row {
  std::string name;
  std::vector<double> ms;  // one sample per operation
  double wall_ms = -1;     // for batch rows: the whole batch

  double Percentile(double p) const {
    if (ms.empty()) return 0;
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    size_t i = static_cast<size_t>(p * static_cast<double>(s.size() - 1) + 0.5);
    return s[std::min(i, s.size() - 1)];
  }
};

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

absl::Status Run(int runs, int vms, bool json) {
  char tmpl[] = "/tmp/fcvm-net-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return ErrnoError("mkdtemp");
  const std::string state_dir = tmpl;
  NetworkOptions o;
  o.state_dir = state_dir;
  o.pool_cidr = "10.232.0.0/16";
  o.name_prefix = "fcvmb";
  o.enable_host_forwarding = false;
  ASSIGN_OR_RETURN(std::unique_ptr<NetworkManager> m, NetworkManager::Create(o));
  RETURN_IF_ERROR(m->ReconcileOrphans({}).status());
  struct Cleanup {
    NetworkManager* m;
    std::string dir;
    ~Cleanup() {
      (void)m->ReconcileOrphans({});
      (void)m->RemoveHostRules();
      (void)RemoveTree(dir);
    }
  } cleanup{m.get(), state_dir};

  std::vector<Row> rows;
  Row baseline{"baseline: bare netns create+delete"};
  for (int i = 0; i < runs; ++i) {
    absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(UniqueFd fd, CreateNamedNetns("fcvmbbase", [] { return absl::OkStatus(); }));
    fd.Reset();
    RETURN_IF_ERROR(DeleteNamedNetns("fcvmbbase"));
    baseline.ms.push_back(Ms(absl::Now() - t0));
  }
  rows.push_back(baseline);

  // The kernel's share of a VM network: a namespace plus a veth pair into it,
  // deleted synchronously (veth deletion waits for RCU grace periods).
  Row baseline_veth{"baseline: netns + veth pair"};
  UniqueFd host_ns(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!host_ns) return ErrnoError("open /proc/thread-self/ns/net");
  ASSIGN_OR_RETURN(Netlink host_nl, Netlink::Open());
  for (int i = 0; i < runs; ++i) {
    absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(UniqueFd fd, CreateNamedNetns("fcvmbbase", [&]() -> absl::Status {
                       ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
                       return nl.CreateVeth("veth0", "fcvmbbase0", host_ns.get());
                     }));
    fd.Reset();
    RETURN_IF_ERROR(host_nl.DeleteLink("fcvmbbase0"));
    RETURN_IF_ERROR(DeleteNamedNetns("fcvmbbase"));
    baseline_veth.ms.push_back(Ms(absl::Now() - t0));
  }
  rows.push_back(baseline_veth);

  Row setup{"setup (1 VM)"}, teardown{"teardown (1 VM)"}, setup_port{"setup, 1 published port"},
      teardown_port{"teardown, 1 published port"}, cycle{"setup+teardown (1 VM)"};
  for (int i = 0; i < runs; ++i) {
    absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(VmNetwork n, m->Setup("bench"));
    absl::Time t1 = absl::Now();
    n = VmNetwork();
    RETURN_IF_ERROR(m->Teardown("bench"));
    absl::Time t2 = absl::Now();
    setup.ms.push_back(Ms(t1 - t0));
    teardown.ms.push_back(Ms(t2 - t1));
    cycle.ms.push_back(Ms(t2 - t0));
  }
  for (int i = 0; i < runs; ++i) {
    absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(VmNetwork n, m->Setup("bench", {{Protocol::kTcp, 43000, 80}}));
    absl::Time t1 = absl::Now();
    n = VmNetwork();
    RETURN_IF_ERROR(m->Teardown("bench"));
    setup_port.ms.push_back(Ms(t1 - t0));
    teardown_port.ms.push_back(Ms(absl::Now() - t1));
  }
  rows.insert(rows.end(), {cycle, setup, teardown, setup_port, teardown_port});

  Row setup_many{absl::StrCat("setup, ", vms, " VMs alive")};
  Row teardown_many{absl::StrCat("teardown, ", vms, " VMs alive")};
  absl::Time b0 = absl::Now();
  for (int i = 0; i < vms; ++i) {
    absl::Time t0 = absl::Now();
    RETURN_IF_ERROR(m->Setup(absl::StrCat("b", i)).status());
    setup_many.ms.push_back(Ms(absl::Now() - t0));
  }
  setup_many.wall_ms = Ms(absl::Now() - b0);
  b0 = absl::Now();
  for (int i = 0; i < vms; ++i) {
    absl::Time t0 = absl::Now();
    RETURN_IF_ERROR(m->Teardown(absl::StrCat("b", i)));
    teardown_many.ms.push_back(Ms(absl::Now() - t0));
  }
  teardown_many.wall_ms = Ms(absl::Now() - b0);
  rows.insert(rows.end(), {setup_many, teardown_many});

  // Two workers at once (fcvmd sets up different VMs concurrently).
  Row setup_par{absl::StrCat("setup, ", vms, " VMs from 2 threads")};
  Row teardown_par{absl::StrCat("teardown, ", vms, " VMs from 2 threads")};
  for (Row* row : {&setup_par, &teardown_par}) {
    const bool up = row == &setup_par;
    absl::Status results[2];
    std::vector<double> samples[2];
    b0 = absl::Now();
    std::vector<std::thread> workers;
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&, w] {
        for (int i = w; i < vms; i += 2) {
          absl::Time t0 = absl::Now();
          std::string id = absl::StrCat("p", i);
          absl::Status st = up ? m->Setup(id).status() : m->Teardown(id);
          samples[w].push_back(Ms(absl::Now() - t0));
          if (!st.ok() && results[w].ok()) results[w] = st;
        }
      });
    }
    for (std::thread& t : workers) t.join();
    row->wall_ms = Ms(absl::Now() - b0);
    for (int w = 0; w < 2; ++w) {
      RETURN_IF_ERROR(results[w]);
      row->ms.insert(row->ms.end(), samples[w].begin(), samples[w].end());
    }
  }
  rows.insert(rows.end(), {setup_par, teardown_par});

  const double base = baseline.Percentile(0.5);
  const double base_veth = baseline_veth.Percentile(0.5);
  if (json) {
    nlohmann::json j = {{"runs", runs}, {"vms", vms}, {"unit", "ms"}};
    nlohmann::json rs = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json e = {{"name", r.name},
                          {"n", r.ms.size()},
                          {"median_ms", r.Percentile(0.5)},
                          {"p99_ms", r.Percentile(0.99)},
                          {"median_vs_baseline", r.Percentile(0.5) / base},
                          {"median_vs_netns_veth", r.Percentile(0.5) / base_veth}};
      if (r.wall_ms >= 0) e["wall_ms"] = r.wall_ms;
      rs.push_back(e);
    }
    j["results"] = rs;
    printf("%s\n", j.dump(2).c_str());
  } else {
    printf("%-36s %5s %10s %10s %10s %8s %9s\n", "operation", "n", "median ms", "p99 ms", "wall ms",
           "x netns", "x n+veth");
    for (const Row& r : rows) {
      std::string wall = r.wall_ms >= 0 ? absl::StrFormat("%.1f", r.wall_ms) : "-";
      printf("%-36s %5zu %10.3f %10.3f %10s %8.1f %9.2f\n", r.name.c_str(), r.ms.size(), r.Percentile(0.5),
             r.Percentile(0.99), wall.c_str(), r.Percentile(0.5) / base, r.Percentile(0.5) / base_veth);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace fcvm::net

int main(int argc, char** argv) {
  int64_t runs = 50, vms = 64;
  bool json = false;
  fcvm::FlagParser flags("fcvm-net-bench [--runs N] [--vms N] [--json]");
  flags.Int("runs", &runs, "samples for the one-VM rows and the baseline");
  flags.Int("vms", &vms, "VMs alive at once for the batch rows");
  flags.Bool("json", &json, "print JSON instead of a table");
  absl::StatusOr<std::vector<std::string>> rest =
      flags.Parse(std::vector<std::string>(argv + 1, argv + argc));
  if (!rest.ok() || !rest->empty()) {
    fprintf(stderr, "%s\n%s", rest.ok() ? "unexpected arguments" : rest.status().ToString().c_str(),
            flags.Help().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    printf("%s", flags.Help().c_str());
    return 0;
  }
  if (geteuid() != 0) {
    fprintf(stderr, "fcvm-net-bench needs root (network namespaces, nftables)\n");
    return 1;
  }
  if (runs < 1 || vms < 1 || vms > 4096) {
    fprintf(stderr, "--runs must be >= 1 and --vms 1..4096\n");
    return 2;
  }
  absl::Status st = fcvm::net::Run(static_cast<int>(runs), static_cast<int>(vms), json);
  if (!st.ok()) {
    fprintf(stderr, "fcvm-net-bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
