// fcvmd and fcvmctl as real processes: start, talk, reflection, health,
// signals, and the errors a user sees.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "probe.grpc.pb.h"
#include "tests/testing/http_client.h"
#include "tests/testing/prometheus.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm {
namespace {

using ::testing::HasSubstr;

using Result = ::fcvm::testing::CommandResult;
using ::fcvm::testing::RunCommand;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    dir_ = tmp_.path();
    socket_ = dir_ + "/run/fcvmd.sock";
    log_ = dir_ + "/fcvmd.log";
  }

  // A clean stop first: it also stops whatever Firecracker the daemon started
  // (a SIGKILLed fcvmd leaves that to the next fcvmd's reconcile, and the temp
  // dir cannot be removed under a running jailer).
  void TearDown() override {
    if (!daemon_.valid()) return;
    if (daemon_.Signal(SIGTERM).ok() && daemon_.Wait(absl::Seconds(20)).ok()) return;
    (void)daemon_.Kill();
  }

  void StartDaemon(std::vector<std::string> extra = {}) {
    int log_fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ASSERT_GE(log_fd, 0);
    SpawnOptions opts;
    // No warm pool: these tests are about the daemon, and a pooled Firecracker
    // would outlive the fcvmd a test kills with SIGKILL.
    opts.argv = {FCVMD_PATH, "--socket",    socket_, "--state-dir", dir_ + "/state", "--log-level",
                 "debug",    "--warm-pool", "0"};
    opts.argv.insert(opts.argv.end(), extra.begin(), extra.end());
    opts.fds = {{log_fd, 2}};
    ASSERT_OK_AND_ASSIGN(daemon_, Process::Spawn(opts));
    close(log_fd);
    // Ready when fcvmd says it serves (after it set the socket's mode: the
    // socket accepts connections a moment before) and the socket accepts a
    // connection; no fixed sleep.
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!absl::StrContains(ReadFile(log_).value_or(""), "serving on unix:") ||
           !ConnectUnix(socket_).ok()) {
      ASSERT_LT(absl::Now(), deadline) << "fcvmd did not start; log:\n" << ReadFile(log_).value_or("");
      ASSERT_OK_AND_ASSIGN(auto exited, daemon_.TryWait());
      ASSERT_FALSE(exited.has_value()) << "fcvmd exited: " << exited->ToString() << "\n"
                                       << ReadFile(log_).value_or("");
      usleep(10000);
    }
  }

  ExitStatus StopDaemon(int sig) {
    EXPECT_OK(daemon_.Signal(sig));
    absl::StatusOr<ExitStatus> st = daemon_.Wait(absl::Seconds(20));
    EXPECT_OK(st.status());
    return st.value_or(ExitStatus{});
  }

  Result Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_});
    return RunCommand(args);
  }

  std::shared_ptr<grpc::Channel> Channel() {
    return grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials());
  }

  ::fcvm::testing::TempDir tmp_{"fcvmd-test"};
  std::string dir_, socket_, log_;
  Process daemon_;
};

TEST_F(DaemonTest, VersionAndLsThenCleanSigterm) {
  StartDaemon();
  struct stat st;
  ASSERT_EQ(stat(socket_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);

  Result version = Ctl({"version"});
  EXPECT_EQ(version.code, 0) << version.err;
  EXPECT_THAT(version.out, HasSubstr("fcvmctl 0.1.0"));
  EXPECT_THAT(version.out, HasSubstr("fcvmd 0.1.0 (api 1)"));

  Result json = Ctl({"--json", "version"});
  ASSERT_EQ(json.code, 0) << json.err;
  nlohmann::json doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << json.out;
  EXPECT_EQ(doc["client_version"], "0.1.0");
  EXPECT_EQ(doc["daemon"]["version"], "0.1.0");
  EXPECT_EQ(doc["daemon"]["api_version"], 1);

  Result ls = Ctl({"ls"});
  EXPECT_EQ(ls.code, 0) << ls.err;
  EXPECT_THAT(ls.out, HasSubstr("ID"));
  EXPECT_THAT(ls.out, HasSubstr("STATE"));
  Result ls_json = Ctl({"ls", "--json"});
  ASSERT_EQ(ls_json.code, 0) << ls_json.err;
  nlohmann::json vms = nlohmann::json::parse(ls_json.out, nullptr, false);
  ASSERT_TRUE(vms.contains("vms")) << ls_json.out;
  EXPECT_TRUE(vms["vms"].is_array());

  ExitStatus exit = StopDaemon(SIGTERM);
  EXPECT_TRUE(exit.success()) << exit.ToString();
  EXPECT_NE(access(socket_.c_str(), F_OK), 0) << "socket left behind";
}

// The answers to client_request_ids outlive fcvmd, also kill -9: the next
// one on the same state directory replays them and refuses an id reused for
// another request. Before, a restarted fcvmd had forgotten every id (the
// reused id ran as a new request: NOT_FOUND for "other").
TEST_F(DaemonTest, ClientRequestIdSurvivesKillAndRestart) {
  StartDaemon();
  v1::PauseVmRequest pause;
  pause.set_ref("ghost");
  pause.set_client_request_id("req-1");
  v1::Vm vm;
  auto call = [&](const v1::PauseVmRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return v1::VmService::NewStub(Channel())->PauseVm(&ctx, req, &vm);
  };
  grpc::Status first = call(pause);
  ASSERT_EQ(first.error_code(), grpc::StatusCode::NOT_FOUND) << first.error_message();
  ASSERT_OK(daemon_.Kill().status());
  StartDaemon();
  // The reused id first: a forgetful fcvmd would run it (NOT_FOUND "other").
  pause.set_ref("other");
  grpc::Status conflict = call(pause);
  EXPECT_EQ(conflict.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << conflict.error_message();
  EXPECT_THAT(conflict.error_message(), HasSubstr("req-1"));
  pause.set_ref("ghost");
  grpc::Status again = call(pause);
  EXPECT_EQ(again.error_code(), first.error_code());
  EXPECT_EQ(again.error_message(), first.error_message());
}

TEST_F(DaemonTest, SigintAlsoStopsCleanly) {
  StartDaemon();
  ExitStatus exit = StopDaemon(SIGINT);
  EXPECT_TRUE(exit.success()) << exit.ToString();
  EXPECT_NE(access(socket_.c_str(), F_OK), 0);
}

TEST_F(DaemonTest, ReflectionListsTheApi) {
  StartDaemon();
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(Channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  EXPECT_THAT(names, ::testing::IsSupersetOf({"fcvm.v1.VmService", "fcvm.v1.SnapshotService",
                                              "fcvm.v1.SystemService", "grpc.health.v1.Health"}));

  // grpcurl describes a service by fetching the file that defines it.
  req.set_file_containing_symbol("fcvm.v1.SnapshotService");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(DaemonTest, HealthServiceSaysServing) {
  StartDaemon();
  auto stub = grpc::health::v1::Health::NewStub(Channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(stub->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(DaemonTest, UnreachableDaemonGivesOneClearLine) {
  Result r = Ctl({"ls"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("cannot reach fcvmd at " + socket_));
  EXPECT_THAT(r.err, HasSubstr("fcvmd --socket " + socket_));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(DaemonTest, SecondDaemonOnSameSocketIsRefused) {
  StartDaemon();
  Result second = RunCommand({FCVMD_PATH, "--socket", socket_, "--state-dir", dir_ + "/state2"});
  EXPECT_EQ(second.code, 1);
  EXPECT_THAT(second.err, HasSubstr("another fcvmd is already serving"));
  // The first one still serves.
  EXPECT_EQ(Ctl({"version"}).code, 0);
}

// Firecracker found but no jailer beside it: fcvmd refuses to start unjailed
// unless told to, and says how to fix it; contradicting flags are refused.
TEST_F(DaemonTest, NoJailerIsRefusedUnlessNoJailerIsGiven) {
  ASSERT_OK(MakeDirs(dir_ + "/bin"));
  const std::string fc = dir_ + "/bin/firecracker";
  ASSERT_OK(WriteFileAtomic(fc, "#!/bin/sh\necho 'Firecracker v1.14.2'\n"));
  ASSERT_EQ(chmod(fc.c_str(), 0755), 0);
  Result r =
      RunCommand({FCVMD_PATH, "--socket", socket_, "--state-dir", dir_ + "/state", "--firecracker", fc});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("no jailer: " + dir_ + "/bin/jailer is not an executable"));
  EXPECT_THAT(r.err, HasSubstr("--jailer PATH"));
  EXPECT_THAT(r.err, HasSubstr("--no-jailer"));
  Result both = RunCommand({FCVMD_PATH, "--socket", socket_, "--state-dir", dir_ + "/state", "--firecracker",
                            fc, "--jailer", fc, "--no-jailer"});
  EXPECT_EQ(both.code, 1);
  EXPECT_THAT(both.err, HasSubstr("--jailer and --no-jailer contradict"));
  Result range = RunCommand({FCVMD_PATH, "--socket", socket_, "--uid-range", "12"});
  EXPECT_EQ(range.code, 2);
  EXPECT_THAT(range.err, HasSubstr("--uid-range must be BASE:COUNT, got '12'"));
  EXPECT_NE(access(socket_.c_str(), F_OK), 0) << "nothing listened";
}

TEST_F(DaemonTest, BadUsageExitsTwo) {
  Result unknown = Ctl({"frobnicate"});
  EXPECT_EQ(unknown.code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command 'frobnicate'"));
  Result bad_flag = RunCommand({FCVMD_PATH, "--no-such-flag"});
  EXPECT_EQ(bad_flag.code, 2);
  EXPECT_THAT(bad_flag.err, HasSubstr("--no-such-flag"));
  Result help = RunCommand({FCVMD_PATH, "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("--state-dir"));
}

// The value of the sample `series` in an exposition, or -1 when absent.
double Sample(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + series.size() + 2, nullptr);
}

TEST_F(DaemonTest, ServesMetricsOnAUnixSocket) {
  const std::string metrics = dir_ + "/metrics.sock";
  StartDaemon({"--metrics-address", "unix:" + metrics});
  EXPECT_EQ(Ctl({"version"}).code, 0);
  EXPECT_EQ(Ctl({"get", "nope"}).code, 1);
  EXPECT_EQ(Ctl({"get", "nope"}).code, 1);
  EXPECT_EQ(Ctl({"ls"}).code, 0);
  ASSERT_OK_AND_ASSIGN(::fcvm::testing::HttpResponse r,
                       ::fcvm::testing::HttpGet("unix:" + metrics, "/metrics"));
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string& text = r.body;
  EXPECT_EQ(Sample(text,
                   "fcvm_grpc_server_handled_total{grpc_service=\"fcvm.v1.VmService\",grpc_method=\"GetVm\","
                   "grpc_code=\"NOT_FOUND\"}"),
            2)
      << text;
  EXPECT_EQ(
      Sample(text,
             "fcvm_grpc_server_handled_total{grpc_service=\"fcvm.v1.VmService\",grpc_method=\"ListVms\","
             "grpc_code=\"OK\"}"),
      1);
  // Methods not called yet are there at 0.
  EXPECT_EQ(Sample(text,
                   "fcvm_grpc_server_handled_total{grpc_service=\"fcvm.v1.SnapshotService\","
                   "grpc_method=\"CloneSnapshot\",grpc_code=\"OK\"}"),
            0);
  EXPECT_EQ(Sample(text,
                   "fcvm_grpc_server_handling_seconds_count{grpc_service=\"fcvm.v1.SystemService\","
                   "grpc_method=\"GetVersion\"}"),
            1);
  EXPECT_EQ(Sample(text, "fcvm_vms{state=\"running\"}"), 0);
  EXPECT_EQ(Sample(text, "fcvm_clones_started_total{backend=\"uffd\"}"), 0);
  EXPECT_EQ(Sample(text, "fcvm_page_server_faults_total"), 0);
  EXPECT_GT(Sample(text, "process_open_fds"), 0);
  EXPECT_GT(Sample(text, "process_resident_memory_bytes"), 1 << 20);
  // Firecracker's version when the environment names one (FCVM_FIRECRACKER_BIN), else "".
  EXPECT_THAT(text, ::testing::ContainsRegex(
                        "\nfcvm_build_info\\{version=\"0\\.1\\.0\",firecracker_version=\"[0-9.]*\"\\} 1\n"));
  if (::fcvm::testing::PrometheusUnavailableReason().empty()) {
    ASSERT_OK_AND_ASSIGN(Result check, ::fcvm::testing::PromtoolCheckMetrics(text));
    EXPECT_EQ(check.code, 0) << check.out << check.err;
    EXPECT_EQ(check.out + check.err, "");
  }
  EXPECT_THAT(ReadFile(log_).value_or(""), HasSubstr("metrics on unix:" + metrics));

  ExitStatus exit = StopDaemon(SIGTERM);
  EXPECT_TRUE(exit.success()) << exit.ToString();
  EXPECT_NE(access(metrics.c_str(), F_OK), 0) << "metrics socket left behind";
}

TEST_F(DaemonTest, MetricsAddressIsCheckedBeforeAnythingStarts) {
  Result wide = RunCommand(
      {FCVMD_PATH, "--socket", socket_, "--state-dir", dir_ + "/state", "--metrics-address", "0.0.0.0:0"});
  EXPECT_EQ(wide.code, 1);
  EXPECT_THAT(wide.err, HasSubstr("--metrics-address 0.0.0.0:0 is not a loopback address"));
  EXPECT_THAT(wide.err, HasSubstr("--metrics-allow-non-loopback"));
  Result bad = RunCommand({FCVMD_PATH, "--socket", socket_, "--state-dir", dir_ + "/state",
                           "--metrics-address", "example.com:80"});
  EXPECT_EQ(bad.code, 1);
  EXPECT_THAT(bad.err, HasSubstr("--metrics-address"));
  // Neither got as far as the state directory.
  EXPECT_NE(access((dir_ + "/state").c_str(), F_OK), 0);
}

TEST_F(DaemonTest, StaleSocketFileIsReplaced) {
  // A socket file left by a crashed daemon: nobody listens on it.
  ASSERT_OK(MakeDirs(dir_ + "/run"));
  { ASSERT_OK_AND_ASSIGN(UniqueFd stale, ListenUnix(socket_)); }
  StartDaemon();
  EXPECT_EQ(Ctl({"version"}).code, 0);
}

}  // namespace
}  // namespace fcvm
