// fcvm-clone-bench: clone latency through fcvmd, from the client's request to
// a running VM, for single clones and for one request of N clones, with the
// UFFD and File memory backends, warm pool off and on; plus the total PSS of
// the batch. Prints a table, and JSON with --json. A program, not a test.
//
// It starts its own fcvmd (on a temporary socket and state directory) for
// each warm-pool setting, boots the test guest, snapshots it, records the
// working set with one UFFD clone, then measures.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "lib/base/file_util.h"
#include "lib/base/flags.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"

namespace fcvm::bench {
namespace {

struct Options {
  std::string fcvmd = FCVMD_PATH;
  std::string guest = FCVM_TEST_GUEST_PATH;
  std::string firecracker;
  int64_t runs = 10;
  int64_t batch = 32;
  int64_t parallelism = 4;
  int64_t warm_pool = 4;
  bool json = false;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Ms(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) * 1e3 + static_cast<double>(d.nanos()) / 1e6;
}

uint64_t PssKib(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string key;
  uint64_t value;
  std::string unit;
  while (in >> key) {
    if (key == "Pss:") {
      in >> value >> unit;
      return value;
    }
    std::getline(in, unit);
  }
  return 0;
}

struct Row {
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

class Fcvmd {
 public:
  static absl::StatusOr<std::unique_ptr<Fcvmd>> Start(const Options& o, int warm_pool) {
    auto d = std::unique_ptr<Fcvmd>(new Fcvmd);
    char dir[] = "/tmp/fcvm-bench-XXXXXX";
    if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp");
    d->dir_ = dir;
    d->socket_ = d->dir_ + "/fcvmd.sock";
    int log = open((d->dir_ + "/fcvmd.log").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    SpawnOptions so;
    so.argv = {o.fcvmd,         "--socket",    d->socket_,    "--state-dir",           d->dir_ + "/state",
               "--firecracker", o.firecracker, "--warm-pool", absl::StrCat(warm_pool), "--log-level",
               "warn"};
    so.fds = {{log, 2}};
    absl::StatusOr<Process> p = Process::Spawn(so);
    close(log);
    if (!p.ok()) return p.status();
    d->process_ = *std::move(p);
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!ConnectUnix(d->socket_).ok()) {
      if (absl::Now() > deadline) return absl::DeadlineExceededError("fcvmd did not start");
      absl::SleepFor(absl::Milliseconds(10));
    }
    d->channel_ = grpc::CreateChannel("unix:" + d->socket_, grpc::InsecureChannelCredentials());
    d->vms_ = fcvm::v1::VmService::NewStub(d->channel_);
    d->snaps_ = fcvm::v1::SnapshotService::NewStub(d->channel_);
    return d;
  }
  ~Fcvmd() {
    if (process_.valid()) {
      (void)process_.Signal(SIGTERM);
      if (!process_.Wait(absl::Seconds(20)).ok()) (void)process_.Kill();
    }
    (void)RemoveTree(dir_);
  }
  fcvm::v1::VmService::Stub& vms() { return *vms_; }
  fcvm::v1::SnapshotService::Stub& snaps() { return *snaps_; }

 private:
  Fcvmd() = default;
  std::string dir_, socket_;
  Process process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<fcvm::v1::VmService::Stub> vms_;
  std::unique_ptr<fcvm::v1::SnapshotService::Stub> snaps_;
};

std::unique_ptr<grpc::ClientContext> Ctx(absl::Duration timeout = absl::Seconds(120)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return ctx;
}

absl::Status Check(const grpc::Status& st, absl::string_view what) {
  if (st.ok()) return absl::OkStatus();
  return absl::UnknownError(absl::StrCat(what, ": ", st.error_message()));
}

absl::Status DeleteVm(Fcvmd& d, const std::string& id) {
  fcvm::v1::DeleteVmRequest req;
  req.set_ref(id);
  req.set_force(true);
  fcvm::v1::DeleteVmResponse resp;
  return Check(d.vms().DeleteVm(Ctx().get(), req, &resp), "delete");
}

// Boots the guest, snapshots it, and records its working set with one UFFD
// clone. Returns the snapshot id.
absl::StatusOr<std::string> Prepare(Fcvmd& d, const Options& o) {
  fcvm::v1::RunVmRequest run;
  run.set_name("bench-base");
  run.mutable_config()->set_kernel_path(o.guest);
  run.mutable_config()->set_boot_args("console=ttyS0 fcvm.read_mib=8 fcvm.write_mib=2 fcvm.tick_ms=1000");
  run.mutable_config()->set_vcpu_count(1);
  run.mutable_config()->set_memory_mib(128);
  fcvm::v1::Vm vm;
  RETURN_IF_ERROR(Check(d.vms().RunVm(Ctx().get(), run, &vm), "run"));
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (ReadFile(vm.console_log_path()).value_or("").find("TICK 2 OK") == std::string::npos) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("guest did not tick");
    absl::SleepFor(absl::Milliseconds(50));
  }
  fcvm::v1::CreateSnapshotRequest sreq;
  sreq.set_vm_ref(vm.id());
  sreq.set_after(fcvm::v1::AFTER_SNAPSHOT_STOP);
  fcvm::v1::Snapshot snap;
  RETURN_IF_ERROR(Check(d.snaps().CreateSnapshot(Ctx().get(), sreq, &snap), "snapshot"));
  fcvm::v1::CloneSnapshotRequest creq;
  creq.set_snapshot_ref(snap.id());
  creq.set_count(1);
  creq.set_prefetch_policy(fcvm::v1::PREFETCH_POLICY_RECORD);
  fcvm::v1::CloneSnapshotResponse cresp;
  RETURN_IF_ERROR(Check(d.snaps().CloneSnapshot(Ctx().get(), creq, &cresp), "record clone"));
  if (cresp.succeeded() != 1) return absl::InternalError("record clone failed: " + cresp.clones(0).error());
  absl::SleepFor(absl::Seconds(2));  // let it touch its working set
  RETURN_IF_ERROR(DeleteVm(d, cresp.clones(0).id()));
  absl::SleepFor(absl::Milliseconds(300));  // the working set is written when the session closes
  return snap.id();
}

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
    for (const auto& c : resp.clones()) {
      if (!c.id().empty()) RETURN_IF_ERROR(DeleteVm(d, c.id()));
    }
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

int Main(int argc, char** argv) {
  Options o;
  if (const char* fc = std::getenv("FCVM_FIRECRACKER_BIN")) o.firecracker = fc;
  FlagParser flags(
      "fcvm-clone-bench [options]\n\nClone latency and memory through fcvmd (needs Firecracker).");
  flags.String("fcvmd", &o.fcvmd, "fcvmd binary", "PATH");
  flags.String("guest", &o.guest, "test guest ELF", "PATH");
  flags.String("firecracker", &o.firecracker, "Firecracker binary (env FCVM_FIRECRACKER_BIN)", "PATH");
  flags.Int("runs", &o.runs, "single-clone requests per configuration (default 10)");
  flags.Int("batch", &o.batch, "clones in the batch request (default 32)");
  flags.Int("parallelism", &o.parallelism, "clones restored at once within a request (default 4)");
  flags.Int("warm-pool", &o.warm_pool, "warm pool size for the 'warm' runs (default 4)");
  flags.Bool("json", &o.json, "print JSON instead of a table");
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
  if (o.firecracker.empty() || access(o.firecracker.c_str(), X_OK) != 0) {
    std::cerr << "fcvm-clone-bench: no Firecracker binary: set FCVM_FIRECRACKER_BIN or --firecracker\n";
    return 2;
  }
  std::vector<Row> rows;
  for (bool warm : {false, true}) {
    absl::StatusOr<std::unique_ptr<Fcvmd>> d = Fcvmd::Start(o, warm ? static_cast<int>(o.warm_pool) : 0);
    if (!d.ok()) {
      std::cerr << "fcvm-clone-bench: " << d.status() << "\n";
      return 1;
    }
    absl::StatusOr<std::string> snap = Prepare(**d, o);
    if (!snap.ok()) {
      std::cerr << "fcvm-clone-bench: prepare: " << snap.status() << "\n";
      return 1;
    }
    for (auto backend : {fcvm::v1::MEMORY_BACKEND_UFFD, fcvm::v1::MEMORY_BACKEND_FILE}) {
      for (bool batch : {false, true}) {
        absl::StatusOr<Row> row = Measure(**d, o, *snap, backend, warm, batch);
        if (!row.ok()) {
          std::cerr << "fcvm-clone-bench: " << row.status() << "\n";
          return 1;
        }
        rows.push_back(*row);
        if (!o.json) std::cerr << "." << std::flush;
      }
    }
  }
  if (o.json) {
    std::cout << "{\"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::cout << absl::StrFormat(
          "  {\"backend\": \"%s\", \"warm_pool\": %s, \"kind\": \"%s\", \"n\": %d, \"p50_ms\": %.2f, "
          "\"p99_ms\": %.2f, \"batch_wall_ms\": %.1f, \"server_p50_ms\": %.2f, \"load_p50_ms\": %.2f, "
          "\"prefetch_p50_ms\": %.2f, \"pss_mib\": %d, \"pooled\": %d, \"failed\": %d}%s\n",
          r.backend, r.warm ? "true" : "false", r.kind, r.n, r.p50_ms, r.p99_ms, r.total_ms, r.server_p50_ms,
          r.load_p50_ms, r.prefetch_p50_ms, r.pss_mib, r.pooled, r.failed, i + 1 < rows.size() ? "," : "");
    }
    std::cout << "]}\n";
    return 0;
  }
  std::cout << "\n"
            << absl::StrFormat("%-7s %-5s %-7s %4s %9s %9s %10s %9s %9s %9s %8s %6s %6s\n", "backend", "warm",
                               "kind", "n", "p50 ms", "p99 ms", "wall ms", "srv p50", "load p50", "pref p50",
                               "PSS MiB", "pooled", "failed");
  for (const Row& r : rows) {
    std::cout << absl::StrFormat("%-7s %-5s %-7s %4d %9.2f %9.2f %10s %9.2f %9.2f %9.2f %8s %6d %6d\n",
                                 r.backend, r.warm ? "on" : "off", r.kind, r.n, r.p50_ms, r.p99_ms,
                                 r.kind == "batch" ? absl::StrFormat("%.1f", r.total_ms) : "-",
                                 r.server_p50_ms, r.load_p50_ms, r.prefetch_p50_ms,
                                 r.kind == "batch" ? absl::StrCat(r.pss_mib) : "-", r.pooled, r.failed);
  }
  std::cout
      << "\nsingle: p50/p99 of request sent -> clone running, measured by the client over --runs requests;\n"
         "batch: one request of --batch clones; p50/p99 of each clone's request -> running time (fcvmd),\n"
         "wall = the whole request at the client; PSS = the batch's Firecracker processes summed.\n";
  return 0;
}

}  // namespace
}  // namespace fcvm::bench

int main(int argc, char** argv) { return fcvm::bench::Main(argc, argv); }
