#pragma once

// Shared pieces of fcvm-clone-bench: its options, an fcvmd of its own on a
// temporary socket and state directory, the RPCs it makes, and what it reads
// from /proc (PSS, CPU time, load).

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "lib/base/process.h"

namespace fcvm::bench {

struct Options {
  std::string fcvmd = FCVMD_PATH;
  std::string guest = FCVM_TEST_GUEST_PATH;
  std::string firecracker;
  // Where fcvmd's state directory and the bare driver's VM directories go.
  std::string work_dir = "/tmp";
  std::vector<std::string> suites = {"latency"};
  // latency
  int64_t runs = 10;
  int64_t batch = 32;
  int64_t parallelism = 4;
  int64_t warm_pool = 4;
  // Each a pass of its own fcvmd: "jailed" (fcvmd's default: the jailer
  // beside Firecracker) and/or "unjailed" (--no-jailer), for the A/B.
  std::vector<std::string> isolation = {"jailed", "unjailed"};
  // fanout
  std::vector<int> fanout_n = {32, 100};
  std::vector<int> huge_n = {32};
  std::vector<int> active_n = {32};
  int64_t fanout_runs = 3;
  int64_t fanout_warm_pool = 0;
  int64_t clone_threads = 32;
  // ksm
  int64_t ksm_n = 32;
  int64_t ksm_tick_ms = 1000;
  std::vector<std::string> ksm_rates = {"1000/20"};
  int64_t ksm_timeout_s = 300;
  // fork: how long the source writes between its full snapshot and the fork
  int64_t fork_write_ms = 1000;
  int64_t fork_write_mib = 2;  // the guest's fcvm.write_mib
  bool json = false;
};

// The test guest's boot arguments with a tick every `tick_ms` (600000: an
// idle guest, asleep in hlt between its 10 ms timer interrupts).
std::string GuestBootArgs(int64_t tick_ms);

double Percentile(std::vector<double> v, double q);
double Median(std::vector<double> v);
double Ms(const google::protobuf::Duration& d);
// Pss of a process (smaps_rollup), KiB; 0 when it is gone.
uint64_t PssKib(pid_t pid);
// utime + stime of a process (or thread), ms; 0 when it is gone.
double CpuMs(pid_t pid);
// The pid of the kernel's ksmd thread, 0 if none.
pid_t KsmdPid();
// Adds the test guest's OK and BAD ticks in a console log to *ok and *bad.
void CountTicks(const std::string& console, int* ok, int* bad);
// "/proc/loadavg"'s first three fields.
std::string LoadAverage();

// An fcvmd of the bench's own. Start makes a fresh temporary directory;
// Restart stops it and starts another on the same directory (the snapshot
// store survives) with other arguments.
class Fcvmd {
 public:
  static absl::StatusOr<std::unique_ptr<Fcvmd>> Start(const Options& o, std::vector<std::string> args);
  ~Fcvmd();
  absl::Status Restart(std::vector<std::string> args);

  pid_t pid() const { return process_.pid(); }
  const std::string& dir() const { return dir_; }
  fcvm::v1::VmService::Stub& vms() { return *vms_; }
  fcvm::v1::SnapshotService::Stub& snaps() { return *snaps_; }

 private:
  explicit Fcvmd(const Options& o) : options_(o) {}
  absl::Status Launch(const std::vector<std::string>& args);
  void Stop();

  const Options& options_;
  std::string dir_, socket_;
  Process process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<fcvm::v1::VmService::Stub> vms_;
  std::unique_ptr<fcvm::v1::SnapshotService::Stub> snaps_;
};

std::unique_ptr<grpc::ClientContext> Ctx(absl::Duration timeout = absl::Seconds(300));
absl::Status Check(const grpc::Status& st, absl::string_view what);
absl::Status DeleteVm(Fcvmd& d, const std::string& id);
// Deletes every clone of the response that has an id.
absl::Status DeleteClones(Fcvmd& d, const fcvm::v1::CloneSnapshotResponse& resp);

struct GuestSpec {
  std::string name;
  int64_t tick_ms = 1000;
  bool huge_pages = false;
};

// Boots the guest, waits for its first OK tick(s), snapshots it (the VM
// stops), and records its working set with one UFFD clone that runs for a
// moment. Returns the snapshot.
absl::StatusOr<fcvm::v1::Snapshot> PrepareSnapshot(Fcvmd& d, const Options& o, const GuestSpec& g);

}  // namespace fcvm::bench
