#pragma once

// A real Prometheus server for tests (Debian package `prometheus`): started
// as a plain process (not the system service) with its own config, data
// directory and a free loopback port, scraping the given targets every
// second; queried through its HTTP API. Also `promtool check metrics`.
//
// Tests skip when the binaries are absent: Start and PromtoolCheckMetrics
// return FailedPrecondition with the reason, see PrometheusUnavailableReason.
//
// Cleanup: the destructor stops Prometheus (SIGTERM, SIGKILL after 15 s),
// reaps it and removes its directory; Prometheus also gets SIGKILL if the
// thread that started it dies (a crashed test leaves no server running).
//
// Thread-safety: one test thread at a time.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "nlohmann/json.hpp"
#include "tests/testing/run_command.h"

namespace fcvm::testing {

// The binaries: $FCVM_PROMETHEUS_BIN / $FCVM_PROMTOOL_BIN, else
// /usr/bin/prometheus and /usr/bin/promtool. "" when not executable.
std::string FindPrometheus();
std::string FindPromtool();
// Why the Prometheus tests cannot run here, or "" when they can.
std::string PrometheusUnavailableReason();

struct ScrapeTarget {
  std::string job;
  std::string address;  // HOST:PORT (Prometheus scrapes TCP only)
  std::string metrics_path = "/metrics";
};

struct PrometheusOptions {
  std::vector<ScrapeTarget> targets;
  absl::Duration scrape_interval = absl::Seconds(1);
  // Recording/alerting rule files (YAML text), evaluated every
  // scrape_interval; see Rules().
  std::vector<std::string> rule_files;
  // Until /-/ready answers 200.
  absl::Duration start_timeout = absl::Seconds(60);
};

class PrometheusServer {
 public:
  // Writes the config, starts Prometheus on 127.0.0.1 (a free port) and waits
  // until it is ready. FailedPrecondition when it is not installed; Internal
  // with the end of its log when it exits or never gets ready.
  static absl::StatusOr<std::unique_ptr<PrometheusServer>> Start(const PrometheusOptions& options);
  ~PrometheusServer();
  PrometheusServer(const PrometheusServer&) = delete;
  PrometheusServer& operator=(const PrometheusServer&) = delete;

  // "127.0.0.1:PORT" of its HTTP API.
  const std::string& address() const { return address_; }

  // GET /api/v1/query?query=...: the "data" object of a successful answer
  // ({"resultType": ..., "result": ...}). InvalidArgument with Prometheus'
  // error for a bad query; Unavailable when it cannot be reached.
  absl::StatusOr<nlohmann::json> Query(const std::string& promql);
  // The value of a query answering exactly one sample (an instant vector of
  // one series, or a scalar). NotFound for an empty vector; FailedPrecondition
  // for more than one series.
  absl::StatusOr<double> QueryValue(const std::string& promql);
  // Polls QueryValue until it equals `want`. DeadlineExceeded naming the last
  // value (or error) after `timeout`.
  absl::Status WaitForValue(const std::string& promql, double want,
                            absl::Duration timeout = absl::Seconds(30));
  // GET /api/v1/rules: the "data" object ({"groups": [{"rules": [{"name",
  // "health", "lastError", "state", ...}]}]}).
  absl::StatusOr<nlohmann::json> Rules();
  // Waits until each target's last scrape succeeded (its `up` is 1).
  absl::Status WaitForTargetsUp(absl::Duration timeout = absl::Seconds(30));

  // The last `max_bytes` of Prometheus' log, for failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  PrometheusServer() = default;
  absl::Status Launch(const std::string& binary, int port);

  PrometheusOptions options_;
  std::string dir_;
  std::string address_;
  Process process_;
};

// `promtool check metrics` with `exposition` on its standard input. The
// result's code is 0 and its output empty when promtool finds no problem.
// FailedPrecondition when promtool is not installed.
absl::StatusOr<CommandResult> PromtoolCheckMetrics(const std::string& exposition);

// `promtool check rules` on a rule file with the text `rules`: code 0 when
// it parses and every expression is valid. FailedPrecondition when promtool
// is not installed.
absl::StatusOr<CommandResult> PromtoolCheckRules(const std::string& rules);

}  // namespace fcvm::testing
