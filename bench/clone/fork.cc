// The live-fork suite: the pause a running VM sees when it is forked (a Diff
// snapshot of what it wrote since its memory base) against the pause of a
// full snapshot of the same VM, taken in the same run just before; and the
// time to a running fork against a full snapshot + clone. The source is the
// test guest, writing --fork-write-mib MiB a tick (every 250 ms; the same
// region each tick) and checking its memory on
// every tick; every fork's ticks are counted (BAD: a fork's memory was not
// exact).
//
// Each run: full snapshot (the baseline; it also becomes the VM's memory
// base) -> clone it once (baseline time to a running clone) -> let the guest
// write for --fork-write-ms -> fork once -> check both, delete both.

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/clone/suites.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"

namespace fcvm::bench {
namespace {

struct Run {
  double full_pause_ms = 0;      // the full snapshot: pause -> files written
  double snapshot_clone_ms = 0;  // full snapshot RPC + clone RPC
  double fork_pause_ms = 0;      // the fork: paused -> resumed
  double fork_ms = 0;            // the fork RPC: request -> fork running
  double written_mib = 0;        // what the fork's Diff snapshot wrote
  std::string kind;
  int ok_ticks = 0, bad_ticks = 0;
};

absl::Status DeleteSnapshot(Fcvmd& d, const std::string& id) {
  fcvm::v1::DeleteSnapshotRequest req;
  req.set_ref(id);
  req.set_force(true);
  fcvm::v1::DeleteSnapshotResponse resp;
  return Check(d.snaps().DeleteSnapshot(Ctx().get(), req, &resp), "snapshot rm");
}

absl::StatusOr<Run> OneRun(Fcvmd& d, const Options& o, const std::string& vm_id, int i) {
  Run run;
  fcvm::v1::CreateSnapshotRequest sreq;
  sreq.set_vm_ref(vm_id);
  sreq.set_name(absl::StrCat("full-", i));
  fcvm::v1::Snapshot full;
  absl::Time t = absl::Now();
  RETURN_IF_ERROR(Check(d.snaps().CreateSnapshot(Ctx().get(), sreq, &full), "full snapshot"));
  fcvm::v1::CloneSnapshotRequest creq;
  creq.set_snapshot_ref(full.id());
  creq.set_count(1);
  fcvm::v1::CloneSnapshotResponse cresp;
  RETURN_IF_ERROR(Check(d.snaps().CloneSnapshot(Ctx().get(), creq, &cresp), "clone"));
  run.snapshot_clone_ms = absl::ToDoubleMilliseconds(absl::Now() - t);
  run.full_pause_ms = Ms(full.create_duration());
  if (cresp.succeeded() != 1) return absl::InternalError("clone failed: " + cresp.clones(0).error());

  absl::SleepFor(absl::Milliseconds(o.fork_write_ms));  // the guest writes 2 MiB a tick
  fcvm::v1::ForkVmRequest freq;
  freq.set_vm_ref(vm_id);
  freq.set_count(1);
  freq.set_name_prefix(absl::StrCat("fork-", i));
  fcvm::v1::ForkVmResponse fresp;
  t = absl::Now();
  RETURN_IF_ERROR(Check(d.snaps().ForkVm(Ctx().get(), freq, &fresp), "fork"));
  run.fork_ms = absl::ToDoubleMilliseconds(absl::Now() - t);
  if (fresp.succeeded() != 1) return absl::InternalError("fork failed: " + fresp.forks(0).error());
  run.fork_pause_ms = Ms(fresp.source_pause());
  run.written_mib = static_cast<double>(fresp.written_bytes()) / (1 << 20);
  run.kind = fresp.kind();

  absl::SleepFor(absl::Milliseconds(800));  // a few ticks in the fork and the clone
  CountTicks(fresp.forks(0).console_log_path(), &run.ok_ticks, &run.bad_ticks);
  RETURN_IF_ERROR(DeleteVm(d, fresp.forks(0).id()));
  RETURN_IF_ERROR(DeleteClones(d, cresp));
  RETURN_IF_ERROR(DeleteSnapshot(d, fresp.snapshot().id()));
  return run;
}

}  // namespace

absl::Status RunForkSuite(const Options& o, std::string* json) {
  // Jailed (fcvmd's default) unless --isolation says unjailed only.
  std::vector<std::string> args = {"--warm-pool", std::to_string(o.warm_pool)};
  const bool unjailed = o.isolation == std::vector<std::string>{"unjailed"};
  if (unjailed) args.push_back("--no-jailer");
  ASSIGN_OR_RETURN(std::unique_ptr<Fcvmd> d, Fcvmd::Start(o, args));
  fcvm::v1::RunVmRequest req;
  req.set_name("fork-source");
  req.mutable_config()->set_kernel_path(o.guest);
  req.mutable_config()->set_boot_args(
      absl::StrCat("console=ttyS0 fcvm.read_mib=8 fcvm.write_mib=", o.fork_write_mib, " fcvm.tick_ms=250"));
  req.mutable_config()->set_vcpu_count(1);
  req.mutable_config()->set_memory_mib(128);
  fcvm::v1::Vm vm;
  RETURN_IF_ERROR(Check(d->vms().RunVm(Ctx().get(), req, &vm), "run"));
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (ReadFile(vm.console_log_path()).value_or("").find("TICK 2 OK") == std::string::npos) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("the source guest did not tick");
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::vector<Run> runs;
  for (int i = 0; i < o.runs; ++i) {
    ASSIGN_OR_RETURN(Run r, OneRun(*d, o, vm.id(), i));
    runs.push_back(r);
    if (!o.json) std::cerr << "." << std::flush;
  }
  int src_ok = 0, src_bad = 0;
  CountTicks(vm.console_log_path(), &src_ok, &src_bad);
  RETURN_IF_ERROR(DeleteVm(*d, vm.id()));

  auto median = [&](double Run::*field) {
    std::vector<double> v;
    for (const Run& r : runs) v.push_back(r.*field);
    return Median(v);
  };
  auto p90 = [&](double Run::*field) {
    std::vector<double> v;
    for (const Run& r : runs) v.push_back(r.*field);
    return Percentile(v, 90);
  };
  int diffs = 0, ok = 0, bad = 0;
  for (const Run& r : runs) {
    diffs += r.kind == "diff" ? 1 : 0;
    ok += r.ok_ticks;
    bad += r.bad_ticks;
  }
  const double full_pause = median(&Run::full_pause_ms), fork_pause = median(&Run::fork_pause_ms);
  const double base_total = median(&Run::snapshot_clone_ms), fork_total = median(&Run::fork_ms);
  if (o.json) {
    absl::StrAppend(
        json, absl::StrFormat("\"fork\": {\"runs\": %d, \"diff_runs\": %d, \"write_ms\": %d, "
                              "\"guest_write_mib\": %d, "
                              "\"written_mib_p50\": %.1f, \"full_pause_ms_p50\": %.1f, "
                              "\"fork_pause_ms_p50\": %.1f, \"fork_pause_ms_p90\": %.1f, "
                              "\"pause_ratio\": %.3f, \"snapshot_clone_ms_p50\": %.1f, "
                              "\"fork_ms_p50\": %.1f, \"latency_ratio\": %.3f, \"fork_ok_ticks\": %d, "
                              "\"fork_bad_ticks\": %d, \"source_ok_ticks\": %d, \"source_bad_ticks\": %d}",
                              static_cast<int>(runs.size()), diffs, static_cast<int>(o.fork_write_ms),
                              static_cast<int>(o.fork_write_mib), median(&Run::written_mib), full_pause,
                              fork_pause, p90(&Run::fork_pause_ms), fork_pause / full_pause, base_total,
                              fork_total, fork_total / base_total, ok, bad, src_ok, src_bad));
    return absl::OkStatus();
  }
  std::cout << "\nlive fork (" << (unjailed ? "unjailed" : "jailed") << "): 128 MiB test guest writing "
            << o.fork_write_mib << " MiB / 250 ms, forked " << o.fork_write_ms
            << " ms after a full snapshot; " << runs.size() << " runs (" << diffs << " diff), medians\n";
  std::cout << absl::StrFormat("%-34s %10s %10s %8s\n", "", "baseline", "fork", "ratio");
  std::cout << absl::StrFormat("%-34s %10.1f %10.1f %8.3f\n", "source pause ms (full snapshot)", full_pause,
                               fork_pause, fork_pause / full_pause);
  std::cout << absl::StrFormat("%-34s %10.1f %10.1f %8.3f\n", "to a running copy ms (snap+clone)", base_total,
                               fork_total, fork_total / base_total);
  std::cout << absl::StrFormat(
      "fork pause p90 %.1f ms; written p50 %.1f MiB; fork ticks %d OK / %d BAD; source "
      "%d OK / %d BAD\n",
      p90(&Run::fork_pause_ms), median(&Run::written_mib), ok, bad, src_ok, src_bad);
  return absl::OkStatus();
}

}  // namespace fcvm::bench
