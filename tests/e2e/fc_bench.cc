// fc_bench: times the Firecracker operations fcvm relies on, with the real
// Firecracker (FCVM_FIRECRACKER_BIN) and the test guest, and prints a table
// and one JSON line of medians.
//
//   FCVM_FIRECRACKER_BIN=/opt/firecracker/firecracker fc_bench [runs]
//
// Each run: launch (process start -> API answers), InstanceStart -> guest
// READY line, pause, Full snapshot (128 MiB guest), then two fresh processes
// restore it: File backend and Uffd backend (the test page server), each
// timed for the /snapshot/load call and for load -> first OK tick.

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "tests/e2e/e2e_util.h"

namespace fcvm {
namespace {

using firecracker::FirecrackerBinary;
using firecracker::MemBackend;
using firecracker::SnapshotLoad;
using firecracker::Vmm;

std::map<std::string, std::vector<absl::Duration>> g_times;
const char* const kOrder[] = {
    "launch_to_api_ready", "instance_start_to_ready", "pause",     "snapshot_full_128mib",
    "load_file",           "load_file_to_first_tick", "load_uffd", "load_uffd_to_first_tick"};

absl::Status Restore(const FirecrackerBinary& bin, const std::string& dir, const std::string& vmstate,
                     const std::string& mem, uint64_t last_tick, bool uffd) {
  std::string name = uffd ? "uffd" : "file";
  ASSIGN_OR_RETURN(
      std::unique_ptr<Vmm> vmm,
      Vmm::Launch(bin, {.vm_dir = dir + "/" + name, .id = name, .parent_death_signal = SIGKILL}));
  g_times["launch_to_api_ready"].push_back(vmm->startup_time());
  std::unique_ptr<e2e::UffdTestServer> server;
  SnapshotLoad load{
      .snapshot_path = vmstate, .backend = MemBackend::kFile, .backend_path = mem, .resume_vm = true};
  if (uffd) {
    ASSIGN_OR_RETURN(server, e2e::UffdTestServer::Start(dir + "/uffd.sock", mem));
    load.backend = MemBackend::kUffd;
    load.backend_path = server->socket_path();
  }
  absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(vmm->LoadSnapshot(load));
  absl::Time t1 = absl::Now();
  RETURN_IF_ERROR(e2e::WaitForOkTicks(vmm->console(), 0, 1, last_tick, absl::Seconds(30)).status());
  absl::Time t2 = absl::Now();
  g_times[uffd ? "load_uffd" : "load_file"].push_back(t1 - t0);
  g_times[uffd ? "load_uffd_to_first_tick" : "load_file_to_first_tick"].push_back(t2 - t1);
  RETURN_IF_ERROR(vmm->Kill().status());
  if (server != nullptr) RETURN_IF_ERROR(server->error());
  return absl::OkStatus();
}

absl::Status OneRun(const FirecrackerBinary& bin) {
  e2e::TempDir dir;
  ASSIGN_OR_RETURN(
      std::unique_ptr<Vmm> vmm,
      Vmm::Launch(bin, {.vm_dir = dir.path() + "/src", .id = "src", .parent_death_signal = SIGKILL}));
  g_times["launch_to_api_ready"].push_back(vmm->startup_time());
  firecracker::BootSpec spec = e2e::GuestBootSpec(e2e::GuestPath());
  RETURN_IF_ERROR(firecracker::CheckKernelImage(spec.boot_source.kernel_image_path));
  RETURN_IF_ERROR(vmm->api().PutBootSource(spec.boot_source));
  RETURN_IF_ERROR(vmm->api().PutMachineConfig(spec.machine));
  absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(vmm->api().InstanceStart());
  ASSIGN_OR_RETURN(uint64_t ready, e2e::WaitForReady(vmm->console(), 0, absl::Seconds(30)));
  g_times["instance_start_to_ready"].push_back(absl::Now() - t0);
  RETURN_IF_ERROR(e2e::WaitForOkTicks(vmm->console(), ready, 1, 0, absl::Seconds(30)).status());
  t0 = absl::Now();
  RETURN_IF_ERROR(vmm->api().Pause());
  g_times["pause"].push_back(absl::Now() - t0);
  std::string vmstate = dir.path() + "/s.vmstate", mem = dir.path() + "/s.mem";
  t0 = absl::Now();
  RETURN_IF_ERROR(vmm->CreateSnapshot({.snapshot_path = vmstate, .mem_file_path = mem}));
  g_times["snapshot_full_128mib"].push_back(absl::Now() - t0);
  uint64_t last = e2e::LastTick(vmm->console());
  RETURN_IF_ERROR(vmm->Kill().status());
  RETURN_IF_ERROR(Restore(bin, dir.path(), vmstate, mem, last, /*uffd=*/false));
  RETURN_IF_ERROR(Restore(bin, dir.path(), vmstate, mem, last, /*uffd=*/true));
  return absl::OkStatus();
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
  for (int i = 0; i < runs; ++i) {
    absl::Status st = OneRun(*bin);
    if (!st.ok()) {
      std::fprintf(stderr, "fc_bench: run %d: %s\n", i + 1, st.ToString().c_str());
      return 1;
    }
  }
  std::printf("Firecracker %s, guest %d MiB, %d runs (ms)\n", bin->version().ToString().c_str(),
              e2e::kGuestMemMib, runs);
  std::printf("%-26s %9s %9s %9s %3s\n", "operation", "median", "min", "max", "n");
  std::string json = "{";
  for (const char* key : kOrder) {
    std::vector<absl::Duration>& v = g_times[key];
    if (v.empty()) continue;
    std::sort(v.begin(), v.end());
    double med = e2e::MedianMs(v);
    std::printf("%-26s %9.2f %9.2f %9.2f %3zu\n", key, med, absl::ToDoubleMilliseconds(v.front()),
                absl::ToDoubleMilliseconds(v.back()), v.size());
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"", key, "_ms\":", absl::StrFormat("%.2f", med));
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace fcvm

int main(int argc, char** argv) { return fcvm::Main(argc, argv); }
