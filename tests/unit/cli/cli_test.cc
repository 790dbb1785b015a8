// RunCli against fake fcvm.v1 services on a unix socket in this process: what
// reaches the server, what lands on stdout and stderr, and the exit codes.

#include "cli/cli.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/progress.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "fcvm/v1/wire.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace fcvm::cli {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

int Lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

template <typename Message>
Message FromJson(const std::string& json) {
  Message m;
  auto st = google::protobuf::util::JsonStringToMessage(json, &m);
  EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << json;
  return m;
}

v1::Vm MakeVm(const std::string& id, const std::string& name, v1::VmState state) {
  v1::Vm vm;
  vm.set_id(id);
  vm.set_name(name);
  vm.set_state(state);
  vm.set_pid(4242);
  vm.set_console_log_path("/var/lib/fcvm/vms/" + id + "/console.log");
  return vm;
}

class FakeVmService final : public v1::VmService::Service {
 public:
  grpc::Status RunVm(grpc::ServerContext* ctx, const v1::RunVmRequest* req, v1::Vm* resp) override {
    if (req->config().kernel_path() == "/no-firecracker") {
      // fcvmd marks every answer of its own (fcvm/v1/wire.h).
      ctx->AddTrailingMetadata(v1::kServedByKey, "fcvmd");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no Firecracker binary configured");
    }
    if (req->config().kernel_path() == "/proxy-unavailable") {
      // An UNAVAILABLE that is not fcvmd's own word: fcvmd was not reached.
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "upstream connect error");
    }
    std::lock_guard<std::mutex> lock(mu);
    run = *req;
    *resp = MakeVm("vm-0123456789ab", req->name(), v1::VM_STATE_RUNNING);
    return grpc::Status::OK;
  }
  grpc::Status GetVm(grpc::ServerContext*, const v1::GetVmRequest* req, v1::Vm* resp) override {
    if (req->ref() != "web-1") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no VM '" + req->ref() + "'");
    *resp = MakeVm("vm-0123456789ab", "web-1", v1::VM_STATE_RUNNING);
    std::lock_guard<std::mutex> lock(mu);
    get = *req;
    if (with_usage) SetUsage(resp, 0, req->usage() == v1::USAGE_DETAIL_UNSPECIFIED);
    return grpc::Status::OK;
  }
  // With usage: every answer is one more second later, and web-1 used half
  // a second more CPU (50 %) and served 100 more faults meanwhile; idle-2
  // used none.
  grpc::Status ListVms(grpc::ServerContext*, const v1::ListVmsRequest* req,
                       v1::ListVmsResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    list = *req;
    ++list_calls;
    v1::Vm* web = resp->add_vms();
    *web = MakeVm("vm-0123456789ab", "web-1", v1::VM_STATE_RUNNING);
    if (with_usage) {
      v1::Vm* idle = resp->add_vms();
      *idle = MakeVm("vm-00000000000b", "idle-2", v1::VM_STATE_PAUSED);
      SetUsage(web, list_calls, req->usage() == v1::USAGE_DETAIL_FULL);
      SetUsage(idle, 0, false);
      *idle->mutable_usage()->mutable_sampled_at() = web->usage().sampled_at();
    }
    return grpc::Status::OK;
  }
  static void SetUsage(v1::Vm* vm, int n, bool pss) {
    vm->set_snapshot_id("snap-a");
    v1::VmUsage* u = vm->mutable_usage();
    *u->mutable_sampled_at() = TimeUtil::SecondsToTimestamp(1'800'000'000 + n);
    *u->mutable_cpu_time() = TimeUtil::MillisecondsToDuration(1000 + 500 * n);
    u->set_rss_bytes(64ull << 20);
    if (pss) u->set_pss_bytes(20ull << 20);
    u->set_page_faults_served(1000 + 100 * static_cast<uint64_t>(n));
    *u->mutable_uptime() = TimeUtil::SecondsToDuration(330 + n);
  }
  grpc::Status DeleteVm(grpc::ServerContext*, const v1::DeleteVmRequest* req,
                        v1::DeleteVmResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    deleted.push_back(*req);
    if (req->ref() == "missing") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no VM 'missing'");
    resp->set_id("vm-" + req->ref());
    resp->set_stop_mode(req->force() ? "forced" : "graceful");
    return grpc::Status::OK;
  }
  // PauseVm and ResumeVm stay UNIMPLEMENTED, like today's fcvmd.

  std::mutex mu;
  v1::RunVmRequest run;
  v1::GetVmRequest get;
  v1::ListVmsRequest list;
  int list_calls = 0;
  std::atomic<bool> with_usage{false};
  std::vector<v1::DeleteVmRequest> deleted;
};

class FakeSnapshotService final : public v1::SnapshotService::Service {
 public:
  grpc::Status CloneSnapshot(grpc::ServerContext*, const v1::CloneSnapshotRequest* req,
                             v1::CloneSnapshotResponse* resp) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      clone = *req;
    }
    absl::SleepFor(clone_delay);
    if (req->snapshot_ref() != "base") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "snapshot 'x' is being deleted");
    }
    for (uint32_t i = 0; i < req->count(); ++i) {
      const bool fail = i == fail_index;
      v1::Vm* vm = resp->add_clones();
      *vm = MakeVm(fail ? "" : absl::StrCat("vm-00000000000", i), absl::StrCat(req->name_prefix(), "-", i),
                   fail ? v1::VM_STATE_FAILED : v1::VM_STATE_RUNNING);
      if (fail) vm->set_error("load snapshot: firecracker exited with 1");
      *vm->mutable_timings()->mutable_total() = TimeUtil::MillisecondsToDuration(100 + 10 * i);
      *vm->mutable_timings()->mutable_load() = TimeUtil::MillisecondsToDuration(30);
    }
    resp->set_failed(fail_index < req->count() ? 1 : 0);
    resp->set_succeeded(req->count() - resp->failed());
    *resp->mutable_total() = TimeUtil::MillisecondsToDuration(250);
    return grpc::Status::OK;
  }

  std::mutex mu;
  v1::CloneSnapshotRequest clone;
  uint32_t fail_index = 1;
  absl::Duration clone_delay = absl::ZeroDuration();
};

class FakeSystemService final : public v1::SystemService::Service {
 public:
  grpc::Status GetPageServerStats(grpc::ServerContext*, const v1::GetPageServerStatsRequest* req,
                                  v1::PageServerStats* resp) override {
    v1::CloneSessionStats* s = resp->add_sessions();
    s->set_vm_id(req->vm_ref().empty() ? "vm-1" : req->vm_ref());
    s->set_snapshot_id("snap-a");
    s->mutable_stats()->set_faults(12);
    resp->mutable_total()->set_faults(12);
    return grpc::Status::OK;
  }
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* req,
                           grpc::ServerWriter<v1::Event>* writer) override {
    v1::Event e;
    e.set_kind(v1::Event::KIND_VM_STATE);
    e.mutable_time()->set_seconds(1795776901);
    e.set_vm_id(req->ref().empty() ? "vm-1" : req->ref());
    e.set_previous_state(v1::VM_STATE_CREATING);
    e.set_state(v1::VM_STATE_RUNNING);
    writer->Write(e);
    if (block_after_first) {
      first_sent = true;
      while (!ctx->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      return grpc::Status::CANCELLED;
    }
    e.set_kind(v1::Event::KIND_SNAPSHOT_CREATED);
    e.set_snapshot_id("snap-a");
    e.set_state(v1::VM_STATE_UNSPECIFIED);
    e.set_previous_state(v1::VM_STATE_UNSPECIFIED);
    e.set_message("written in 840 ms");
    writer->Write(e);
    return grpc::Status::OK;
  }

  std::atomic<bool> block_after_first{false};
  std::atomic<bool> first_sent{false};
};

struct Result {
  int code;
  std::string out;
  std::string err;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/fcvmctl-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    socket_ = dir_ + "/fcvmd.sock";
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_, grpc::InsecureServerCredentials());
    builder.RegisterService(&vms_);
    builder.RegisterService(&snapshots_);
    builder.RegisterService(&system_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }

  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    unlink(socket_.c_str());
    rmdir(dir_.c_str());
  }

  Result Ctl(std::vector<std::string> args, bool tty = false) {
    args.insert(args.begin(), {"--socket", socket_});
    std::ostringstream out, err;
    int code = RunCli(args, out, err, tty);
    return {code, out.str(), err.str()};
  }

  std::string dir_, socket_;
  FakeVmService vms_;
  FakeSnapshotService snapshots_;
  FakeSystemService system_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(CliTest, CloneTableSummaryAndExitOneWhenACloneFailed) {
  Result r =
      Ctl({"clone", "base", "--count", "3", "--name-prefix", "w", "--prefetch", "record", "--label", "b=7"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "fcvmctl: clone base: 1 of 3 clones failed\n");
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << r.out;
  EXPECT_THAT(lines[0], StartsWith("NAME  ID               STATE     PID  TOTAL_MS"));
  EXPECT_THAT(lines[1], StartsWith("w-0   vm-000000000000  running  4242     100.0"));
  EXPECT_THAT(lines[2], HasSubstr("failed"));
  EXPECT_THAT(lines[2], HasSubstr("load snapshot: firecracker exited with 1"));
  EXPECT_EQ(lines[4], "2 succeeded, 1 failed in 250.0 ms; clone total p50 100.0 ms, p99 120.0 ms");

  std::lock_guard<std::mutex> lock(snapshots_.mu);
  EXPECT_EQ(snapshots_.clone.count(), 3u);
  EXPECT_EQ(snapshots_.clone.prefetch_policy(), v1::PREFETCH_POLICY_RECORD);
  EXPECT_THAT(snapshots_.clone.labels(), UnorderedElementsAre(Pair("b", "7")));
}

TEST_F(CliTest, CloneAllGoodExitsZero) {
  snapshots_.fail_index = 99;
  Result r = Ctl({"clone", "base", "--count", "2"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("2 succeeded, 0 failed"));
}

TEST_F(CliTest, CloneJsonIsTheResponseAndProgressStaysOnStderr) {
  snapshots_.clone_delay = absl::Milliseconds(1300);
  Result r = Ctl({"--json", "--progress", "clone", "base", "--count", "3"});
  EXPECT_EQ(r.code, 1);
  auto resp = FromJson<v1::CloneSnapshotResponse>(r.out);
  EXPECT_EQ(resp.clones_size(), 3);
  EXPECT_EQ(resp.failed(), 1u);
  EXPECT_THAT(r.out, HasSubstr("\"memory_backend\""));  // proto field names, defaults printed
  EXPECT_THAT(r.err, HasSubstr("cloning base x3: 1s\n"));
  EXPECT_THAT(r.err, HasSubstr("fcvmctl: clone base: 1 of 3 clones failed\n"));
}

TEST_F(CliTest, NoProgressWithoutTtyOrFlag) {
  snapshots_.clone_delay = absl::Milliseconds(1200);
  snapshots_.fail_index = 99;
  Result r = Ctl({"clone", "base"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
}

TEST_F(CliTest, ServerErrorIsOneLineExitOne) {
  Result r = Ctl({"clone", "gone"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "fcvmctl: clone gone: failed precondition: snapshot 'x' is being deleted\n");

  Result get = Ctl({"get", "nope"});
  EXPECT_EQ(get.code, 1);
  EXPECT_EQ(get.err, "fcvmctl: get nope: not found: no VM 'nope'\n");
}

// fcvmd answering UNAVAILABLE (a dependency of its is down) is not "cannot
// reach fcvmd".
// Before, whether the channel was still connected decided, and fcvmd's
// "shutting down" came out as "cannot reach fcvmd" once fcvmd had closed its
// connections: now fcvmd's mark on the answer decides.
TEST_F(CliTest, ServerSideUnavailableIsNotUnreachable) {
  Result r = Ctl({"run", "--kernel", "/no-firecracker"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "fcvmctl: run: unavailable in fcvmd: no Firecracker binary configured\n");
  Result proxy = Ctl({"run", "--kernel", "/proxy-unavailable"});
  EXPECT_EQ(proxy.code, 1);
  EXPECT_THAT(proxy.err, HasSubstr("cannot reach fcvmd"));
}

TEST_F(CliTest, UnimplementedIsOneClearLine) {
  Result r = Ctl({"pause", "web-1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, StartsWith("fcvmctl: pause web-1: not implemented by this fcvmd"));
  EXPECT_EQ(Lines(r.err), 1) << r.err;
}

TEST_F(CliTest, RunSendsConfigAndPrintsTheVm) {
  Result r =
      Ctl({"run", "--kernel", "/k/vmlinux", "--drive", "rootfs=/x.img,ro,root", "--name", "web-1", "--net"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "id:          vm-0123456789ab\n"
            "name:        web-1\n"
            "state:       running\n"
            "pid:         4242\n"
            "console log: /var/lib/fcvm/vms/vm-0123456789ab/console.log\n");
  std::lock_guard<std::mutex> lock(vms_.mu);
  EXPECT_EQ(vms_.run.config().kernel_path(), "/k/vmlinux");
  ASSERT_EQ(vms_.run.config().drives_size(), 1);
  EXPECT_TRUE(vms_.run.config().drives(0).is_root_device());
  EXPECT_TRUE(vms_.run.config().network().enabled());
}

TEST_F(CliTest, GetJsonRoundTrips) {
  Result r = Ctl({"get", "web-1", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::Vm vm = FromJson<v1::Vm>(r.out);
  EXPECT_EQ(vm.name(), "web-1");
  EXPECT_EQ(vm.state(), v1::VM_STATE_RUNNING);
  Result table = Ctl({"get", "web-1"});
  EXPECT_THAT(table.out, HasSubstr("console log:"));
  EXPECT_THAT(table.out, HasSubstr("timings:\n"));
}

TEST_F(CliTest, LsSendsFilters) {
  Result r = Ctl({"ls", "--label", "app=web", "--state", "running", "--snapshot", "base"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(
      r.out,
      StartsWith("ID               NAME   STATE    BACKEND  SNAPSHOT  PID   IP  CPU  RSS  FAULTS  AGE\n"));
  std::lock_guard<std::mutex> lock(vms_.mu);
  EXPECT_THAT(vms_.list.label_selector(), UnorderedElementsAre(Pair("app", "web")));
  EXPECT_THAT(vms_.list.states(), ElementsAre(v1::VM_STATE_RUNNING));
  EXPECT_EQ(vms_.list.snapshot_ref(), "base");
  EXPECT_EQ(vms_.list.usage(), v1::USAGE_DETAIL_UNSPECIFIED);
}

TEST_F(CliTest, LsAndGetShowUsage) {
  vms_.with_usage = true;
  Result r = Ctl({"ls", "--pss"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(
      r.out,
      "ID               NAME    STATE    BACKEND  SNAPSHOT  PID   IP    CPU     RSS     PSS  FAULTS  AGE\n"
      "vm-0123456789ab  web-1   running  uffd     snap-a    4242  -   1.50s  64 MiB  20 MiB    1100  -\n"
      "vm-00000000000b  idle-2  paused   uffd     snap-a    4242  -   1.00s  64 MiB       -    1000  -\n");
  {
    std::lock_guard<std::mutex> lock(vms_.mu);
    EXPECT_EQ(vms_.list.usage(), v1::USAGE_DETAIL_FULL);
  }
  Result get = Ctl({"get", "web-1"});
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_THAT(get.out,
              HasSubstr("usage:\n  cpu time:      1.00s\n  rss:           64 MiB\n  pss:           20 MiB\n"
                        "  faults served: 1000\n  uptime:        5m30s\n"));
}

TEST_F(CliTest, TopShowsCpuBetweenTwoSamplesSortedByCpu) {
  vms_.with_usage = true;
  Result r = Ctl({"top", "--interval", "100ms", "--iterations", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> frames = absl::StrSplit(r.out, "\n\nfcvm top", absl::SkipEmpty());
  ASSERT_EQ(frames.size(), 2u) << r.out;
  EXPECT_THAT(r.out, HasSubstr("2 VMs: 1 running, 1 paused, 0 other; CPU 50.0 %, RSS 128 MiB\n\n"));
  EXPECT_THAT(
      r.out,
      HasSubstr("ID               NAME    STATE    CPU%  CPU-TIME     RSS  FAULTS  FAULTS/S  UPTIME\n"
                "vm-0123456789ab  web-1   running  50.0     2.00s  64 MiB    1200       100   5m32s\n"
                "vm-00000000000b  idle-2  paused    0.0     1.00s  64 MiB    1000         0   5m30s\n"));
  std::lock_guard<std::mutex> lock(vms_.mu);
  EXPECT_EQ(vms_.list_calls, 3) << "one sample, then one per frame";
  EXPECT_EQ(vms_.list.usage(), v1::USAGE_DETAIL_BASIC);
}

TEST_F(CliTest, TopJsonIsOneSample) {
  vms_.with_usage = true;
  Result r = Ctl({"--json", "top", "--interval", "100ms", "--sort", "name"});
  ASSERT_EQ(r.code, 0) << r.err;
  google::protobuf::Struct doc = FromJson<google::protobuf::Struct>(r.out);
  EXPECT_DOUBLE_EQ(doc.fields().at("interval_seconds").number_value(), 0.1);
  const auto& vms = doc.fields().at("vms").list_value();
  ASSERT_EQ(vms.values_size(), 2);
  const auto& idle = vms.values(0).struct_value().fields();  // sorted by name
  const auto& web = vms.values(1).struct_value().fields();
  EXPECT_EQ(idle.at("name").string_value(), "idle-2");
  EXPECT_DOUBLE_EQ(web.at("cpu_percent").number_value(), 50);
  EXPECT_DOUBLE_EQ(web.at("faults_per_second").number_value(), 100);
  EXPECT_DOUBLE_EQ(web.at("rss_bytes").number_value(), 64 << 20);
  EXPECT_EQ(web.at("pss_bytes").kind_case(), google::protobuf::Value::kNullValue);
  std::lock_guard<std::mutex> lock(vms_.mu);
  EXPECT_EQ(vms_.list_calls, 2);
}

TEST_F(CliTest, TopEndsCleanlyOnSigint) {
  vms_.with_usage = true;
  Result r;
  std::thread t([&] { r = Ctl({"top", "--interval", "1h"}); });
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(vms_.mu);
      if (vms_.list_calls >= 1) break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  // The handler is installed before the first sample is taken.
  kill(getpid(), SIGINT);
  t.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, "") << "interrupted before the first frame";
  struct sigaction sa;
  ASSERT_EQ(sigaction(SIGINT, nullptr, &sa), 0);
  EXPECT_EQ(sa.sa_handler, SIG_DFL);
}

TEST_F(CliTest, RmReportsEachRefAndFailsIfAnyFailed) {
  Result r = Ctl({"rm", "a", "missing", "b", "--grace", "2s"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "deleted vm-a (graceful)\ndeleted vm-b (graceful)\n");
  EXPECT_EQ(r.err, "fcvmctl: rm missing: not found: no VM 'missing'\n");
  std::lock_guard<std::mutex> lock(vms_.mu);
  ASSERT_EQ(vms_.deleted.size(), 3u) << "one failure does not stop the others";
  EXPECT_EQ(TimeUtil::DurationToSeconds(vms_.deleted[2].grace_period()), 2);
}

TEST_F(CliTest, RmJson) {
  Result r = Ctl({"--json", "rm", "a", "missing", "--force"});
  EXPECT_EQ(r.code, 1);
  google::protobuf::Struct doc = FromJson<google::protobuf::Struct>(r.out);
  const auto& deleted = doc.fields().at("deleted").list_value();
  ASSERT_EQ(deleted.values_size(), 1);
  EXPECT_EQ(deleted.values(0).struct_value().fields().at("id").string_value(), "vm-a");
  EXPECT_EQ(deleted.values(0).struct_value().fields().at("stop_mode").string_value(), "forced");
  const auto& failed = doc.fields().at("failed").list_value();
  ASSERT_EQ(failed.values_size(), 1);
  EXPECT_EQ(failed.values(0).struct_value().fields().at("ref").string_value(), "missing");
  EXPECT_EQ(failed.values(0).struct_value().fields().at("code").string_value(), "NOT_FOUND");
}

TEST_F(CliTest, StatsTable) {
  Result r = Ctl({"stats", "web-1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("VM     SNAPSHOT  PID  POLICY  FAULTS"));
  EXPECT_THAT(r.out, HasSubstr("\nweb-1  snap-a"));
  EXPECT_THAT(r.out, HasSubstr("\nTOTAL "));
}

TEST_F(CliTest, WatchPrintsEachEventUntilTheStreamEnds) {
  Result r = Ctl({"watch"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "2026-11-27T10:55:01.000Z  vm-state          vm-1  creating -> running\n"
            "2026-11-27T10:55:01.000Z  snapshot-created  vm-1/snap-a  written in 840 ms\n");

  Result json = Ctl({"watch", "web-1", "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  std::vector<std::string> lines = absl::StrSplit(json.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << json.out;
  EXPECT_EQ(FromJson<v1::Event>(lines[0]).vm_id(), "web-1");
  EXPECT_EQ(FromJson<v1::Event>(lines[1]).kind(), v1::Event::KIND_SNAPSHOT_CREATED);
}

TEST_F(CliTest, WatchEndsCleanlyOnSigint) {
  system_.block_after_first = true;
  Result r;
  std::thread t([&] { r = Ctl({"watch"}); });
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!system_.first_sent && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(system_.first_sent);
  absl::SleepFor(absl::Milliseconds(100));
  kill(getpid(), SIGINT);
  t.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, "2026-11-27T10:55:01.000Z  vm-state          vm-1  creating -> running\n");
  // The previous (default) handler is back.
  struct sigaction sa;
  ASSERT_EQ(sigaction(SIGINT, nullptr, &sa), 0);
  EXPECT_EQ(sa.sa_handler, SIG_DFL);
}

TEST_F(CliTest, WatchWithTimeoutEndsWithZero) {
  system_.block_after_first = true;
  Result r = Ctl({"--timeout", "300ms", "watch"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Lines(r.out), 1);
}

TEST(CliUsage, BadInputExitsTwoWithOneLineAndNoCall) {
  struct Case {
    std::vector<std::string> args;
    std::string err;
  };
  const Case cases[] = {
      {{"clone", "base", "--backend", "foo"},
       "fcvmctl: clone: --backend: unknown memory backend 'foo' (want uffd or file)\n"},
      {{"run", "--kernel", "/k", "--label", "nokey"}, "fcvmctl: run: --label: 'nokey' is not KEY=VALUE\n"},
      {{"run", "--kernel", "/k", "--drive", "rootfs:/x"},
       "fcvmctl: run: --drive: 'rootfs:/x': no '=' (want ID=PATH[,ro][,root])\n"},
      {{"get"}, "fcvmctl: get: missing REF (usage: fcvmctl get REF)\n"},
      {{"pause", "a", "b"}, "fcvmctl: pause: unexpected argument 'b' (usage: fcvmctl pause REF)\n"},
      {{"snapshot", "create"},
       "fcvmctl: snapshot create: missing VM_REF (usage: fcvmctl snapshot create VM_REF [options])\n"},
      {{"snapshot"},
       "fcvmctl: snapshot: missing subcommand (create, ls, get or rm; see 'fcvmctl snapshot --help')\n"},
      {{"snapshot", "frob"}, "fcvmctl: unknown command 'snapshot frob' (see 'fcvmctl --help')\n"},
      {{"frobnicate"}, "fcvmctl: unknown command 'frobnicate' (see 'fcvmctl --help')\n"},
      {{"ls", "--timeout", "soon"},
       "fcvmctl: ls: --timeout: not a positive duration: 'soon' (e.g. 500ms, 5s, 2m, inf)\n"},
      {{"stats", "a", "b"}, "fcvmctl: stats: unexpected argument 'b' (usage: fcvmctl stats [VM_REF])\n"},
      {{"top", "--sort", "mem"},
       "fcvmctl: top: --sort: unknown sort key 'mem' (want cpu, rss, pss, faults, uptime or name)\n"},
      {{"top", "--interval", "1ms"},
       "fcvmctl: top: --interval: want a duration from 100ms to 1h (e.g. 1s, 500ms), got '1ms'\n"},
      {{"top", "--iterations", "-1"}, "fcvmctl: top: --iterations: must be 0 or more\n"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.begin(), {"--socket", "/nonexistent/fcvmd.sock"});
    std::ostringstream out, err;
    EXPECT_EQ(RunCli(args, out, err), 2) << ::testing::PrintToString(c.args);
    EXPECT_EQ(err.str(), c.err);
    EXPECT_EQ(out.str(), "");
  }
}

TEST(CliUsage, HelpListsEveryCommandAndEachCommandsOptions) {
  std::ostringstream out, err;
  ASSERT_EQ(RunCli({"--help"}, out, err), 0);
  for (const char* cmd : {"run", "ls", "get", "pause", "resume", "rm", "snapshot create", "snapshot ls",
                          "snapshot get", "snapshot rm", "clone", "stats", "watch", "version"}) {
    EXPECT_THAT(out.str(), HasSubstr(absl::StrCat("\n  ", cmd, " "))) << cmd;
  }
  std::ostringstream cout, cerr;
  ASSERT_EQ(RunCli({"clone", "--help"}, cout, cerr), 0);
  for (const char* opt :
       {"--count N", "--backend BACKEND", "--prefetch POLICY", "--name-prefix PREFIX", "--label KEY=VALUE",
        "--stay-paused", "--all-or-nothing", "--parallelism N", "--json"}) {
    EXPECT_THAT(cout.str(), HasSubstr(opt)) << opt;
  }
  std::ostringstream sout, serr;
  ASSERT_EQ(RunCli({"snapshot", "rm", "--help"}, sout, serr), 0);
  EXPECT_THAT(sout.str(), HasSubstr("usage: fcvmctl [options] snapshot rm REF [--force]"));
}

TEST(CliUsage, UnreachableDaemonIsOneLine) {
  std::ostringstream out, err;
  EXPECT_EQ(RunCli({"--socket", "/nonexistent/fcvmd.sock", "stats"}, out, err), 1);
  EXPECT_THAT(err.str(), StartsWith("fcvmctl: cannot reach fcvmd at /nonexistent/fcvmd.sock (No such file"));
  EXPECT_EQ(Lines(err.str()), 1);
}

TEST(Progress, RedrawsOnTtyAndErasesAtTheEnd) {
  std::ostringstream err;
  {
    Progress p(err, "cloning base x3", /*tty=*/true, absl::Milliseconds(10));
    absl::SleepFor(absl::Milliseconds(80));
  }
  const std::string s = err.str();
  EXPECT_THAT(s, StartsWith("\r| cloning base x3 0.0s"));
  EXPECT_THAT(s, HasSubstr("\r/ cloning base x3 "));
  EXPECT_EQ(s.find('\n'), std::string::npos);
  EXPECT_TRUE(absl::EndsWith(s, "\r\033[K")) << s;
}

TEST(Progress, PlainLinesWithoutTty) {
  std::ostringstream err;
  {
    Progress p(err, "snapshotting web-1", /*tty=*/false, absl::Milliseconds(10), absl::Milliseconds(30));
    absl::SleepFor(absl::Milliseconds(100));
  }
  const std::string s = err.str();
  EXPECT_THAT(s, StartsWith("snapshotting web-1: 0s\n"));
  EXPECT_EQ(s.find('\r'), std::string::npos);
  EXPECT_GE(Lines(s), 2);
}

TEST(Progress, NothingWhenTheCallIsQuick) {
  std::ostringstream err;
  { Progress p(err, "x", /*tty=*/false); }
  EXPECT_EQ(err.str(), "");
}

}  // namespace
}  // namespace fcvm::cli
