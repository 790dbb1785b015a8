// fcvmd's metrics against the real things: fcvmd with the real Firecracker
// and the test guest serves /metrics on a loopback port, a real Prometheus
// scrapes it while the test makes clones (some of them failing on purpose),
// and Prometheus' query API must report exactly what the test did: clones
// started and failed by backend and code, the clone-latency histogram's
// count, VMs by state, one snapshot. promtool must find nothing wrong with
// fcvmd's exposition, and the PromQL and sample alerts of
// docs/operations.md must work.
// Per-VM usage (get, ls, top) is checked on the same VMs.
//
// Skips, saying why, without Firecracker, /dev/kvm and the test guest, or
// without the `prometheus` package.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/http_client.h"
#include "tests/testing/prometheus.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using json = nlohmann::json;
using ::fcvm::testing::PrometheusServer;
using ::fcvm::testing::RunCommand;
using Result = ::fcvm::testing::CommandResult;

// A loopback port nobody listens on right now (bound, then released).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) < 0) {
    if (fd >= 0) close(fd);
    return 0;
  }
  close(fd);
  return ntohs(a.sin_port);
}

// The rule file under "### Sample alerts" in docs/operations.md (its first
// ```yaml block), or "" when it is not there.
std::string SampleAlerts() {
  absl::StatusOr<std::string> doc = ReadFile(std::string(FCVM_SOURCE_DIR) + "/docs/operations.md");
  if (!doc.ok()) return "";
  size_t section = doc->find("\n### Sample alerts\n");
  if (section == std::string::npos) return "";
  size_t begin = doc->find("```yaml\n", section);
  if (begin == std::string::npos) return "";
  begin += 8;
  size_t end = doc->find("\n```\n", begin);
  if (end == std::string::npos) return "";
  return doc->substr(begin, end - begin + 1);
}

class FcvmdPrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = e2e::MissingPrerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    std::string no_prometheus = ::fcvm::testing::PrometheusUnavailableReason();
    if (!no_prometheus.empty()) GTEST_SKIP() << no_prometheus;
    socket_ = tmp_.path() + "/fcvmd.sock";
    log_ = tmp_.path() + "/fcvmd.log";
    // The port is free when picked; another process taking it before fcvmd
    // binds makes fcvmd exit, and the test retries with another.
    for (int attempt = 0; attempt < 3 && !daemon_.valid(); ++attempt) {
      metrics_ = absl::StrCat("127.0.0.1:", FreePort());
      StartDaemon();
    }
    ASSERT_TRUE(daemon_.valid()) << ReadFile(log_).value_or("");
  }

  void StartDaemon() {
    absl::StatusOr<Process> p = e2e::StartFcvmd(FCVMD_PATH, tmp_.path(), {"--metrics-address", metrics_});
    if (absl::IsUnavailable(p.status())) return;  // exited: the port was taken, retried
    ASSERT_OK(p.status());
    daemon_ = *std::move(p);
  }

  void TearDown() override {
    if (!daemon_.valid()) return;
    ASSERT_OK(daemon_.Signal(SIGTERM));
    ASSERT_OK_AND_ASSIGN(ExitStatus st, daemon_.Wait(absl::Seconds(30)));
    EXPECT_TRUE(st.success()) << st.ToString() << "\n" << ReadFile(log_).value_or("");
    std::vector<std::string> left = e2e::Leftovers(tmp_.path());
    EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
  }

  Result CtlRaw(std::vector<std::string> args) {
    args.insert(args.begin(), {FCVMCTL_PATH, "--socket", socket_, "--json"});
    return RunCommand(args);
  }

  json Ctl(std::vector<std::string> args, int want_code = 0) {
    Result r = CtlRaw(args);
    EXPECT_EQ(r.code, want_code) << absl::StrJoin(args, " ") << "\n" << r.err << r.out;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  e2e::TempDir tmp_;
  std::string socket_, log_, metrics_;
  Process daemon_;
};

TEST_F(FcvmdPrometheusTest, ScrapedCloneCountsEqualWhatTheTestDid) {
  // The sample alerts of docs/operations.md are valid rules, and Prometheus
  // evaluates them against fcvmd (checked below).
  const std::string alerts = SampleAlerts();
  ASSERT_THAT(alerts, ::testing::HasSubstr("alert: FcvmClonesFailing"))
      << "no sample alerts in operations.md";
  ASSERT_OK_AND_ASSIGN(Result rules_check, ::fcvm::testing::PromtoolCheckRules(alerts));
  EXPECT_EQ(rules_check.code, 0) << rules_check.out << rules_check.err;
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<PrometheusServer> prom,
      PrometheusServer::Start({.targets = {{.job = "fcvmd", .address = metrics_}}, .rule_files = {alerts}}));
  ASSERT_OK(prom->WaitForTargetsUp()) << prom->LogTail();

  // A VM with a writable drive, and its snapshot: every clone copies the
  // snapshot's copy of that drive.
  const std::string data = tmp_.path() + "/data.img";
  ASSERT_OK(WriteFileAtomic(data, std::string(1 << 20, 'd')));
  json base = Ctl({"run", "--name", "base", "--kernel", e2e::GuestPath(), "--boot-args", e2e::kGuestBootArgs,
                   "--memory-mib", "128", "--drive", "data=" + data});
  ASSERT_EQ(base["state"], "VM_STATE_RUNNING") << base.dump();
  json snap = Ctl({"snapshot", "create", "base", "--name", "golden"});
  ASSERT_EQ(snap["name"], "golden") << snap.dump();
  const std::string disk = std::string(snap["path"]) + "/disks/data";
  ASSERT_EQ(access(disk.c_str(), R_OK), 0) << disk;

  // 3 UFFD clones that succeed.
  json ok = Ctl({"clone", "golden", "--count", "3"});
  ASSERT_EQ(ok["succeeded"], 3) << ok.dump();
  // 2 that fail, each on its own: the snapshot's drive copy is gone, so
  // each clone's disk copy fails (NOT_FOUND) after its restore began.
  ASSERT_EQ(rename(disk.c_str(), (disk + ".away").c_str()), 0);
  json failed = Ctl({"clone", "golden", "--count", "2", "--name-prefix", "broken"}, /*want_code=*/1);
  ASSERT_EQ(rename((disk + ".away").c_str(), disk.c_str()), 0);
  ASSERT_EQ(failed["failed"], 2) << failed.dump();
  for (const json& c : failed["clones"]) {
    EXPECT_THAT(std::string(c["error"]), ::testing::StartsWith("NOT_FOUND")) << c.dump();
  }
  // 2 File-backend clones that succeed.
  json file = Ctl({"clone", "golden", "--count", "2", "--backend", "file", "--name-prefix", "file"});
  ASSERT_EQ(file["succeeded"], 2) << file.dump();

  // What Prometheus scraped equals what was done.
  const std::string job = "job=\"fcvmd\"";
  auto sel = [&](const std::string& labels) {
    return absl::StrCat("{", job, labels.empty() ? "" : ",", labels, "}");
  };
  EXPECT_OK(prom->WaitForValue("fcvm_clones_started_total" + sel("backend=\"uffd\""), 5)) << prom->LogTail();
  EXPECT_OK(prom->WaitForValue("fcvm_clones_started_total" + sel("backend=\"file\""), 2));
  EXPECT_OK(prom->WaitForValue("fcvm_clones_failed_total" + sel("backend=\"uffd\",code=\"NOT_FOUND\""), 2));
  EXPECT_OK(prom->WaitForValue("sum(fcvm_clones_failed_total" + sel("") + ")", 2));
  EXPECT_OK(prom->WaitForValue("fcvm_clone_duration_seconds_count" + sel("backend=\"uffd\""), 3));
  EXPECT_OK(prom->WaitForValue("fcvm_clone_duration_seconds_count" + sel("backend=\"file\""), 2));
  EXPECT_OK(
      prom->WaitForValue("fcvm_clone_duration_seconds_bucket" + sel("backend=\"uffd\",le=\"+Inf\""), 3));
  EXPECT_OK(prom->WaitForValue(
      "fcvm_clone_phase_duration_seconds_count" + sel("backend=\"uffd\",phase=\"load\""), 3));
  EXPECT_OK(prom->WaitForValue("fcvm_vms" + sel("state=\"running\""), 6));  // base + 3 + 2
  EXPECT_OK(prom->WaitForValue("fcvm_vms" + sel("state=\"failed\""), 0));   // failed clones are removed
  EXPECT_OK(prom->WaitForValue("fcvm_snapshot_create_duration_seconds_count" + sel(""), 1));
  EXPECT_OK(
      prom->WaitForValue("fcvm_grpc_server_handled_total" +
                             sel("grpc_service=\"fcvm.v1.SnapshotService\",grpc_method=\"CloneSnapshot\","
                                 "grpc_code=\"OK\""),
                         3));
  ASSERT_OK_AND_ASSIGN(double faults, prom->QueryValue("fcvm_page_server_faults_total" + sel("")));
  EXPECT_GT(faults, 0);
  ASSERT_OK_AND_ASSIGN(double fault_count,
                       prom->QueryValue("fcvm_page_server_fault_duration_seconds_count" + sel("")));
  EXPECT_GT(fault_count, 0);
  ASSERT_OK_AND_ASSIGN(double written, prom->QueryValue("fcvm_snapshot_written_bytes_total" + sel("")));
  EXPECT_GE(written, 128.0 * (1 << 20));
  EXPECT_OK(prom->WaitForValue("resets(fcvm_clones_started_total" + sel("backend=\"uffd\"") + "[5m])", 0));

  // The PromQL of docs/operations.md answers.
  ASSERT_OK_AND_ASSIGN(double p99,
                       prom->QueryValue("histogram_quantile(0.99, sum by (le) "
                                        "(rate(fcvm_clone_duration_seconds_bucket{backend=\"uffd\"}[5m])))"));
  EXPECT_GT(p99, 0);
  EXPECT_LE(p99, 30);
  ASSERT_OK_AND_ASSIGN(double rate, prom->QueryValue("rate(fcvm_page_server_faults_total[1m])"));
  EXPECT_GE(rate, 0);

  // The sample alerts: every rule evaluates without error, and 2 failed
  // clones out of 7 make FcvmClonesFailing pending (it needs 10 minutes to
  // fire). A failure code never seen before still counts: fcvmd exports
  // every code at 0 from the start.
  EXPECT_OK(prom->WaitForValue("count(ALERTS{alertname=\"FcvmClonesFailing\",alertstate=\"pending\"})", 1));
  absl::Time rules_deadline = absl::Now() + absl::Seconds(30);
  std::string unhealthy;
  do {
    unhealthy.clear();
    ASSERT_OK_AND_ASSIGN(json rules, prom->Rules());
    size_t n = 0;
    for (const json& g : rules["groups"]) {
      for (const json& rule : g["rules"]) {
        ++n;
        if (rule.value("health", "") != "ok") absl::StrAppend(&unhealthy, rule.dump(), "\n");
      }
    }
    if (n != 5) absl::StrAppend(&unhealthy, n, " rules loaded, want 5\n");
    if (unhealthy.empty()) break;
    // Polling a condition with a deadline: rules are evaluated every second.
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < rules_deadline);
  EXPECT_EQ(unhealthy, "");

  // promtool finds nothing wrong with the exposition as fcvmd serves it.
  ASSERT_OK_AND_ASSIGN(::fcvm::testing::HttpResponse scrape, ::fcvm::testing::HttpGet(metrics_, "/metrics"));
  ASSERT_EQ(scrape.status, 200);
  ASSERT_OK_AND_ASSIGN(Result check, ::fcvm::testing::PromtoolCheckMetrics(scrape.body));
  EXPECT_EQ(check.code, 0) << check.out << check.err;
  EXPECT_EQ(check.out + check.err, "");

  // Per-VM usage on the same VMs: a UFFD clone's page faults, everyone's CPU
  // time and memory.
  std::string uffd_clone = ok["clones"][0]["id"];
  json got = Ctl({"get", uffd_clone});
  ASSERT_TRUE(got.contains("usage")) << got.dump();
  EXPECT_GT(std::stoull(std::string(got["usage"]["rss_bytes"])), 1u << 20) << got.dump();
  EXPECT_GT(std::stoull(std::string(got["usage"]["pss_bytes"])), 0u) << got.dump();
  EXPECT_GT(std::stoull(std::string(got["usage"]["page_faults_served"])), 0u) << got.dump();
  json ls = Ctl({"ls"});
  ASSERT_EQ(ls["vms"].size(), 6u) << ls.dump();
  for (const json& vm : ls["vms"]) {
    ASSERT_TRUE(vm.contains("usage")) << vm.dump();
    EXPECT_FALSE(vm["usage"].contains("pss_bytes")) << "ls leaves PSS out unless asked: " << vm.dump();
  }
  json top = Ctl({"top", "--interval", "500ms"});
  ASSERT_EQ(top["vms"].size(), 6u) << top.dump();
  for (const json& vm : top["vms"]) {
    EXPECT_TRUE(vm["cpu_percent"].is_number()) << vm.dump();
    EXPECT_GE(vm["cpu_percent"].get<double>(), 0) << vm.dump();
  }

  std::vector<std::string> rm = {"rm", "base"};
  for (const json* list : {&ok, &file}) {
    for (const json& c : (*list)["clones"]) rm.push_back(c["id"]);
  }
  Result r = CtlRaw(rm);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_OK(prom->WaitForValue("fcvm_vms" + sel("state=\"running\""), 0));
  EXPECT_OK(prom->WaitForValue("sum(fcvm_vm_deletions_total" + sel("") + ")", 6));
  EXPECT_EQ(CtlRaw({"snapshot", "rm", "golden"}).code, 0);
}

}  // namespace
}  // namespace fcvm
