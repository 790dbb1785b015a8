#include "bench/clone/common.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"

namespace fcvm::bench {

std::string GuestBootArgs(int64_t tick_ms) {
  return absl::StrCat("console=ttyS0 fcvm.read_mib=8 fcvm.write_mib=2 fcvm.tick_ms=", tick_ms);
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Ms(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) * 1e3 + static_cast<double>(d.nanos()) / 1e6;
}

uint64_t PssKib(pid_t pid) {
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

double CpuMs(pid_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat")).value_or("");
  // The command name may hold spaces: fields are counted after its ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ');
  // f[0] is field 3 (state): utime is field 14, stime 15.
  if (f.size() < 13) return 0;
  uint64_t utime = 0, stime = 0;
  (void)absl::SimpleAtoi(f[11], &utime);
  (void)absl::SimpleAtoi(f[12], &stime);
  return static_cast<double>(utime + stime) * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

pid_t KsmdPid() {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  pid_t found = 0;
  while (dirent* d = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(d->d_name, &pid)) continue;
    if (absl::StripAsciiWhitespace(ReadFile(absl::StrCat("/proc/", pid, "/comm")).value_or("")) == "ksmd") {
      found = pid;
      break;
    }
  }
  closedir(proc);
  return found;
}

std::string LoadAverage() {
  std::string s = ReadFile("/proc/loadavg").value_or("");
  std::vector<std::string> f = absl::StrSplit(s, ' ');
  if (f.size() < 3) return "?";
  return absl::StrCat(f[0], " ", f[1], " ", f[2]);
}

// ---- fcvmd ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Fcvmd>> Fcvmd::Start(const Options& o, std::vector<std::string> args) {
  auto d = std::unique_ptr<Fcvmd>(new Fcvmd(o));
  std::string tmpl = o.work_dir + "/fcvm-bench-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return ErrnoError(absl::StrCat("mkdtemp ", tmpl));
  d->dir_ = tmpl;
  d->socket_ = d->dir_ + "/fcvmd.sock";
  RETURN_IF_ERROR(d->Launch(args));
  return d;
}

absl::Status Fcvmd::Launch(const std::vector<std::string>& args) {
  int log = open((dir_ + "/fcvmd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  SpawnOptions so;
  so.argv = {options_.fcvmd,  "--socket",           socket_,       "--state-dir", dir_ + "/state",
             "--firecracker", options_.firecracker, "--log-level", "warn"};
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.fds = {{log, 2}};
  absl::StatusOr<Process> p = Process::Spawn(so);
  close(log);
  if (!p.ok()) return p.status();
  process_ = *std::move(p);
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!ConnectUnix(socket_).ok()) {
    if (absl::StatusOr<std::optional<ExitStatus>> ex = process_.TryWait(); ex.ok() && ex->has_value()) {
      return absl::UnavailableError(absl::StrCat("fcvmd exited: ", (*ex)->ToString(),
                                                 "; its log: ", ReadFile(dir_ + "/fcvmd.log").value_or("")));
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("fcvmd did not start");
    absl::SleepFor(absl::Milliseconds(10));
  }
  channel_ = grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
  vms_ = fcvm::v1::VmService::NewStub(channel_);
  snaps_ = fcvm::v1::SnapshotService::NewStub(channel_);
  return absl::OkStatus();
}

void Fcvmd::Stop() {
  vms_.reset();
  snaps_.reset();
  channel_.reset();
  if (process_.valid()) {
    (void)process_.Signal(SIGTERM);
    if (!process_.Wait(absl::Seconds(30)).ok()) (void)process_.Kill();
  }
  process_ = Process();
}

absl::Status Fcvmd::Restart(std::vector<std::string> args) {
  Stop();
  return Launch(args);
}

Fcvmd::~Fcvmd() {
  Stop();
  (void)RemoveTree(dir_);
}

// ---- RPCs -----------------------------------------------------------------

std::unique_ptr<grpc::ClientContext> Ctx(absl::Duration timeout) {
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

absl::Status DeleteClones(Fcvmd& d, const fcvm::v1::CloneSnapshotResponse& resp) {
  for (const auto& c : resp.clones()) {
    if (!c.id().empty()) RETURN_IF_ERROR(DeleteVm(d, c.id()));
  }
  return absl::OkStatus();
}

absl::StatusOr<fcvm::v1::Snapshot> PrepareSnapshot(Fcvmd& d, const Options& o, const GuestSpec& g) {
  fcvm::v1::RunVmRequest run;
  run.set_name(g.name);
  run.mutable_config()->set_kernel_path(o.guest);
  run.mutable_config()->set_boot_args(GuestBootArgs(g.tick_ms));
  run.mutable_config()->set_vcpu_count(1);
  run.mutable_config()->set_memory_mib(128);
  if (g.huge_pages) run.mutable_config()->set_huge_pages(fcvm::v1::HUGE_PAGES_2M);
  fcvm::v1::Vm vm;
  RETURN_IF_ERROR(Check(d.vms().RunVm(Ctx().get(), run, &vm), "run"));
  // An idle guest ticks once right after READY, then sleeps: its first OK
  // tick is enough. An active one is snapshotted after its second.
  const std::string want = g.tick_ms >= 10000 ? "TICK 1 OK" : "TICK 2 OK";
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (ReadFile(vm.console_log_path()).value_or("").find(want) == std::string::npos) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("guest ", g.name, " did not print ", want, ": ",
                                                      ReadFile(vm.console_log_path()).value_or("")));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  fcvm::v1::CreateSnapshotRequest sreq;
  sreq.set_vm_ref(vm.id());
  sreq.set_name(g.name);
  sreq.set_after(fcvm::v1::AFTER_SNAPSHOT_STOP);
  fcvm::v1::Snapshot snap;
  RETURN_IF_ERROR(Check(d.snaps().CreateSnapshot(Ctx().get(), sreq, &snap), "snapshot"));  // deletes the VM
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
  return snap;
}

void CountTicks(const std::string& console, int* ok, int* bad) {
  static const std::regex kTick("FCVM-GUEST TICK ([0-9]+) (OK|BAD)");
  for (absl::string_view line : absl::StrSplit(ReadFile(console).value_or(""), '\n')) {
    std::string l(line);
    std::smatch m;
    if (std::regex_search(l, m, kTick)) (m[2] == "OK" ? *ok : *bad)++;
  }
}

}  // namespace fcvm::bench
