// fc_bench: times the Firecracker operations fcvm relies on, with the real
// Firecracker (FCVM_FIRECRACKER_BIN) and the test guest, and prints a table
// and one JSON line of medians.
//
//   FCVM_FIRECRACKER_BIN=/path/to/firecracker [FCVM_JAILER_BIN=/path/to/jailer] fc_bench [runs]
//
// Each run: launch (process start -> API answers), InstanceStart -> guest
// READY line, pause, Full snapshot (128 MiB guest), then two fresh processes
// restore it: File backend and Uffd backend (the test page server), each
// timed for the /snapshot/load call and for load -> first OK tick.
//
// With the jailer too (FCVM_JAILER_BIN, else "jailer" beside Firecracker; as
// root), each run repeats the same steps jailed (rows "jailed_*": own uid,
// chroot, PID namespace, memory/cpu/pids cgroups with the minimum memory
// limit for the guest), the restores loading the same snapshot as the
// unjailed ones, and reports the memory each jailed VM used beyond its
// guest's resident memory: the VM cgroup's peak charge and Firecracker's RSS,
// each minus the RSS of the guest memory mapping (both after the first tick),
// and the cgroup's peak once the jailed source wrote its snapshot.

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/firecracker/cgroup.h"
#include "lib/firecracker/jail.h"
#include "lib/firecracker/uid_pool.h"
#include "lib/firecracker/vmm.h"
#include "tests/e2e/e2e_util.h"

namespace fcvm {
namespace {

using firecracker::FirecrackerBinary;
using firecracker::JailerBinary;
using firecracker::JailFile;
using firecracker::JailOptions;
using firecracker::MemBackend;
using firecracker::SnapshotLoad;
using firecracker::Vmm;

std::map<std::string, std::vector<absl::Duration>> g_times;
std::map<std::string, std::vector<double>> g_mib;
const char* const kOrder[] = {"launch_to_api_ready",
                              "jailed_launch_to_api_ready",
                              "instance_start_to_ready",
                              "jailed_instance_start_to_ready",
                              "pause",
                              "snapshot_full_128mib",
                              "jailed_snapshot_full_128mib",
                              "load_file",
                              "jailed_load_file",
                              "load_file_to_first_tick",
                              "jailed_load_file_to_first_tick",
                              "load_uffd",
                              "jailed_load_uffd",
                              "load_uffd_to_first_tick",
                              "jailed_load_uffd_to_first_tick"};
const char* const kMemOrder[] = {"boot_cgroup_peak_beyond_guest", "boot_vmm_rss_beyond_guest",
                                 "file_cgroup_peak_beyond_guest", "file_vmm_rss_beyond_guest",
                                 "uffd_cgroup_peak_beyond_guest", "uffd_vmm_rss_beyond_guest",
                                 "snapshot_cgroup_peak"};

// What the jailed runs share.
struct Jail {
  JailerBinary jailer;
  std::unique_ptr<firecracker::UidPool> uids;
  std::string base;
  std::string parent = absl::StrCat("fcvm-bench-", getpid());
};

// KiB of field `key` ("Rss") of the mapping of `size_kib` in /proc/pid/smaps,
// and the process's VmRSS in KiB.
struct Rss {
  uint64_t guest_kib = 0;
  uint64_t total_kib = 0;
};
Rss ReadRss(pid_t pid, uint64_t size_kib) {
  Rss r;
  absl::StatusOr<std::string> smaps = ReadFile(absl::StrCat("/proc/", pid, "/smaps"));
  if (smaps.ok()) {
    bool in_guest = false;
    for (absl::string_view line : absl::StrSplit(*smaps, '\n')) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() >= 2 && f[0] == "Size:") {
        uint64_t kib = 0;
        in_guest = absl::SimpleAtoi(f[1], &kib) && kib == size_kib;
      } else if (f.size() >= 2 && f[0] == "Rss:" && in_guest) {
        uint64_t kib = 0;
        if (absl::SimpleAtoi(f[1], &kib)) r.guest_kib += kib;
      }
    }
  }
  absl::StatusOr<std::string> status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  if (status.ok()) {
    for (absl::string_view line : absl::StrSplit(*status, '\n')) {
      std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      if (f.size() >= 2 && f[0] == "VmRSS:") (void)absl::SimpleAtoi(f[1], &r.total_kib);
    }
  }
  return r;
}

// The VM cgroup's peak memory charge in bytes (v1 max_usage, v2 peak).
uint64_t CgroupPeak(const Vmm& vmm) {
  absl::StatusOr<firecracker::CgroupHost> host = firecracker::CgroupHost::Detect();
  if (!host.ok()) return 0;
  for (const std::string& dir : firecracker::VmCgroupDirs(*host, vmm.cgroup_plan(), vmm.options().id)) {
    for (const char* f : {"/memory.max_usage_in_bytes", "/memory.peak"}) {
      absl::StatusOr<std::string> v = ReadFile(dir + f);
      uint64_t bytes = 0;
      if (v.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*v), &bytes)) return bytes;
    }
  }
  return 0;
}

void RecordMemory(const std::string& what, const Vmm& vmm) {
  Rss rss = ReadRss(vmm.pid(), uint64_t{e2e::kGuestMemMib} << 10);
  uint64_t peak = CgroupPeak(vmm);
  g_mib[what + "_vmm_rss_beyond_guest"].push_back(static_cast<double>(rss.total_kib - rss.guest_kib) / 1024);
  if (peak > 0) {
    g_mib[what + "_cgroup_peak_beyond_guest"].push_back(static_cast<double>(peak) / (1 << 20) -
                                                        static_cast<double>(rss.guest_kib) / 1024);
  }
}

absl::StatusOr<std::unique_ptr<Vmm>> LaunchVm(const FirecrackerBinary& bin, const std::string& dir,
                                              const std::string& name, Jail* jail,
                                              std::vector<JailFile> files) {
  firecracker::VmmOptions options{.vm_dir = dir + "/" + name, .id = name, .parent_death_signal = SIGKILL};
  if (jail != nullptr) {
    ASSIGN_OR_RETURN(uint32_t uid, jail->uids->Lease(name));
    options.jail = JailOptions{.jailer = jail->jailer,
                               .chroot_base_dir = jail->base,
                               .uid = uid,
                               .gid = uid,
                               .parent_cgroup = jail->parent,
                               .limits = {.memory_bytes = firecracker::MinMemoryBytes(e2e::kGuestMemMib),
                                          .cpu_quota_us = 200000,
                                          .cpu_period_us = 100000,
                                          .pids_max = 16},
                               .files = std::move(files)};
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, Vmm::Launch(bin, std::move(options)));
  g_times[jail != nullptr ? "jailed_launch_to_api_ready" : "launch_to_api_ready"].push_back(
      vmm->startup_time());
  return vmm;
}

absl::Status Finish(Vmm& vmm, Jail* jail) {
  RETURN_IF_ERROR(vmm.Kill().status());
  if (jail != nullptr) RETURN_IF_ERROR(jail->uids->Release(vmm.options().id));
  return absl::OkStatus();
}

absl::Status Restore(const FirecrackerBinary& bin, const std::string& dir, const std::string& vmstate,
                     const std::string& mem, uint64_t last_tick, bool uffd, Jail* jail) {
  std::string name = absl::StrCat(jail != nullptr ? "jailed-" : "", uffd ? "uffd" : "file");
  std::string prefix = jail != nullptr ? "jailed_" : "";
  std::vector<JailFile> files;
  if (jail != nullptr) {
    files.push_back({.host_path = vmstate, .jail_path = "/s.vmstate"});
    if (!uffd) files.push_back({.host_path = mem, .jail_path = "/s.mem"});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm, LaunchVm(bin, dir, name, jail, std::move(files)));
  std::unique_ptr<e2e::UffdTestServer> server;
  SnapshotLoad load{.snapshot_path = jail != nullptr ? "/s.vmstate" : vmstate,
                    .backend = MemBackend::kFile,
                    .backend_path = jail != nullptr ? "/s.mem" : mem,
                    .resume_vm = true};
  if (uffd) {
    std::string socket = dir + "/" + name + ".sock";
    if (jail != nullptr) {
      ASSIGN_OR_RETURN(socket, vmm->HostPath("/uffd.sock"));
    }
    ASSIGN_OR_RETURN(server, e2e::UffdTestServer::Start(socket, mem));
    // Only root and the VM's uid can enter its chroot.
    if (chmod(socket.c_str(), 0666) < 0) return ErrnoError(absl::StrCat("chmod ", socket));
    load.backend = MemBackend::kUffd;
    load.backend_path = jail != nullptr ? "/uffd.sock" : socket;
  }
  absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(vmm->LoadSnapshot(load));
  absl::Time t1 = absl::Now();
  RETURN_IF_ERROR(e2e::WaitForOkTicks(vmm->console(), 0, 1, last_tick, absl::Seconds(30)).status());
  absl::Time t2 = absl::Now();
  g_times[prefix + (uffd ? "load_uffd" : "load_file")].push_back(t1 - t0);
  g_times[prefix + (uffd ? "load_uffd_to_first_tick" : "load_file_to_first_tick")].push_back(t2 - t1);
  if (jail != nullptr) RecordMemory(uffd ? "uffd" : "file", *vmm);
  RETURN_IF_ERROR(Finish(*vmm, jail));
  if (server != nullptr) RETURN_IF_ERROR(server->error());
  return absl::OkStatus();
}

// Boots the guest, pauses it and takes a Full snapshot into `vmstate`/`mem`
// (host paths). Returns the last tick before the snapshot.
absl::StatusOr<uint64_t> BootAndSnapshot(const FirecrackerBinary& bin, const std::string& dir, Jail* jail,
                                         const std::string& vmstate, const std::string& mem) {
  std::string prefix = jail != nullptr ? "jailed_" : "";
  std::vector<JailFile> files;
  if (jail != nullptr) files.push_back({.host_path = e2e::GuestPath(), .jail_path = "/vmlinux"});
  ASSIGN_OR_RETURN(std::unique_ptr<Vmm> vmm,
                   LaunchVm(bin, dir, jail != nullptr ? "jailed-src" : "src", jail, std::move(files)));
  firecracker::BootSpec spec = e2e::GuestBootSpec(jail != nullptr ? "/vmlinux" : e2e::GuestPath());
  if (jail != nullptr) {
    RETURN_IF_ERROR(firecracker::CheckLimitsForGuest(vmm->options().jail->limits, spec.machine.vcpu_count,
                                                     static_cast<uint64_t>(spec.machine.mem_size_mib)));
  }
  RETURN_IF_ERROR(firecracker::CheckKernelImage(e2e::GuestPath()));
  RETURN_IF_ERROR(vmm->api().PutBootSource(spec.boot_source));
  RETURN_IF_ERROR(vmm->api().PutMachineConfig(spec.machine));
  absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(vmm->api().InstanceStart());
  ASSIGN_OR_RETURN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  g_times[prefix + "instance_start_to_ready"].push_back(absl::Now() - t0);
  RETURN_IF_ERROR(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, absl::Seconds(30)).status());
  if (jail != nullptr) RecordMemory("boot", *vmm);
  t0 = absl::Now();
  RETURN_IF_ERROR(vmm->api().Pause());
  if (jail == nullptr) g_times["pause"].push_back(absl::Now() - t0);
  std::string snap_state = jail != nullptr ? "/s.vmstate" : vmstate;
  std::string snap_mem = jail != nullptr ? "/s.mem" : mem;
  t0 = absl::Now();
  RETURN_IF_ERROR(vmm->CreateSnapshot({.snapshot_path = snap_state, .mem_file_path = snap_mem}));
  g_times[prefix + "snapshot_full_128mib"].push_back(absl::Now() - t0);
  // The memory file went through the page cache, charged to the VM's cgroup.
  if (jail != nullptr) {
    g_mib["snapshot_cgroup_peak"].push_back(static_cast<double>(CgroupPeak(*vmm)) / (1 << 20));
  }
  uint64_t last = e2e::LastTick(vmm->console());
  if (jail != nullptr) {
    ASSIGN_OR_RETURN(std::string host_state, vmm->HostPath(snap_state));
    ASSIGN_OR_RETURN(std::string host_mem, vmm->HostPath(snap_mem));
    RETURN_IF_ERROR(firecracker::TakeFromJail(host_state, vmstate));
    RETURN_IF_ERROR(firecracker::TakeFromJail(host_mem, mem));
  }
  RETURN_IF_ERROR(Finish(*vmm, jail));
  return last;
}

absl::Status OneRun(const FirecrackerBinary& bin, Jail* jail) {
  e2e::TempDir dir;
  std::string vmstate = dir.path() + "/s.vmstate", mem = dir.path() + "/s.mem";
  ASSIGN_OR_RETURN(uint64_t last, BootAndSnapshot(bin, dir.path(), nullptr, vmstate, mem));
  if (jail != nullptr) {
    jail->base = dir.path() + "/jails";
    // The jailed source's snapshot only times its creation; every restore
    // below loads the unjailed one, so both sides load the same files.
    RETURN_IF_ERROR(
        BootAndSnapshot(bin, dir.path(), jail, dir.path() + "/j.vmstate", dir.path() + "/j.mem").status());
  }
  // Interleaved, so that a drift in the machine's load hits both sides.
  for (bool uffd : {false, true}) {
    RETURN_IF_ERROR(Restore(bin, dir.path(), vmstate, mem, last, uffd, nullptr));
    if (jail != nullptr) RETURN_IF_ERROR(Restore(bin, dir.path(), vmstate, mem, last, uffd, jail));
  }
  return absl::OkStatus();
}

void PrintTable(const std::string& title, int runs) {
  std::printf("%s, %d runs (ms)\n", title.c_str(), runs);
  std::printf("%-32s %9s %9s %9s %3s\n", "operation", "median", "min", "max", "n");
  std::string json = "{";
  for (const char* key : kOrder) {
    std::vector<absl::Duration>& v = g_times[key];
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    double med = e2e::MedianMs(v);
    std::printf("%-32s %9.2f %9.2f %9.2f %3zu\n", key, med, absl::ToDoubleMilliseconds(v.front()),
                absl::ToDoubleMilliseconds(v.back()), v.size());
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"", key, "_ms\":", absl::StrFormat("%.2f", med));
  }
  if (!g_mib.empty()) {
    std::printf("\njailed VM memory beyond the guest's resident memory (MiB)\n");
    std::printf("%-32s %9s %9s %9s %3s\n", "what", "median", "min", "max", "n");
  }
  for (const char* key : kMemOrder) {
    std::vector<double>& v = g_mib[key];
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    double med = v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    std::printf("%-32s %9.1f %9.1f %9.1f %3zu\n", key, med, v.front(), v.back(), v.size());
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"", key, "_mib\":", absl::StrFormat("%.1f", med));
  }
  std::printf("%s}\n", json.c_str());
}

int Main(int argc, char** argv) {
  int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  std::string missing = e2e::MissingPrerequisite();
  if (!missing.empty()) {
    std::fprintf(stderr, "fc_bench: %s\n", missing.c_str());
    return 2;
  }
  absl::StatusOr<FirecrackerBinary> bin = FirecrackerBinary::Probe(e2e::FirecrackerPath());
  if (!bin.ok()) {
    std::fprintf(stderr, "fc_bench: %s\n", bin.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Jail> jail;
  e2e::TempDir pool_dir;
  std::string no_jail = e2e::MissingJailPrerequisite();
  if (no_jail.empty()) {
    absl::StatusOr<JailerBinary> jailer = JailerBinary::Probe(e2e::JailerPath());
    absl::StatusOr<std::unique_ptr<firecracker::UidPool>> uids =
        firecracker::UidPool::Open(pool_dir.path() + "/uids.json");
    if (!jailer.ok() || !uids.ok()) {
      std::fprintf(stderr, "fc_bench: %s\n",
                   (!jailer.ok() ? jailer.status() : uids.status()).ToString().c_str());
      return 1;
    }
    jail.reset(new Jail{.jailer = *jailer, .uids = std::move(*uids)});
  } else {
    std::fprintf(stderr, "fc_bench: no jailed runs: %s\n", no_jail.c_str());
  }
  int rc = 0;
  for (int i = 0; i < runs; ++i) {
    absl::Status st = OneRun(*bin, jail.get());
    if (!st.ok()) {
      std::fprintf(stderr, "fc_bench: run %d: %s\n", i + 1, st.ToString().c_str());
      rc = 1;
      break;
    }
  }
  if (jail != nullptr) {
    // The VMs' cgroups are gone with them; their parent goes now.
    absl::StatusOr<firecracker::CgroupHost> host = firecracker::CgroupHost::Detect();
    if (host.ok()) {
      std::set<std::string> parents;
      for (const auto& [c, mount] : host->v1_mounts) parents.insert(mount + "/" + jail->parent);
      if (!host->v2_mount.empty()) parents.insert(host->v2_mount + "/" + jail->parent);
      for (const std::string& p : parents) rmdir(p.c_str());
    }
  }
  if (rc != 0) return rc;
  PrintTable(absl::StrCat("Firecracker ", bin->version().ToString(), jail != nullptr ? ", jailer " : "",
                          jail != nullptr ? jail->jailer.version().ToString() : "", ", guest ",
                          e2e::kGuestMemMib, " MiB"),
             runs);
  return 0;
}

}  // namespace
}  // namespace fcvm

int main(int argc, char** argv) { return fcvm::Main(argc, argv); }
