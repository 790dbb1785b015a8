#include "tests/testing/prometheus.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "tests/testing/http_client.h"

namespace fcvm::testing {
namespace {

std::string FindBinary(const char* env, const char* fallback) {
  const char* from_env = std::getenv(env);
  std::string path = from_env != nullptr && *from_env != '\0' ? from_env : fallback;
  return access(path.c_str(), X_OK) == 0 ? path : "";
}

// A loopback port nobody listens on right now. Another process may take it
// before Prometheus binds it; Start retries with a new one then.
absl::StatusOr<int> PickFreePort() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket");
  sockaddr_in sin;
  std::memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) < 0)
    return ErrnoError("bind 127.0.0.1:0");
  socklen_t len = sizeof(sin);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len) < 0) return ErrnoError("getsockname");
  return ntohs(sin.sin_port);
}

std::string UrlEncode(absl::string_view s) {
  std::string out;
  for (char c : s) {
    bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_' || c == '.' || c == '~';
    if (unreserved) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out;
}

std::string Seconds(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), "ms"); }

}  // namespace

std::string FindPrometheus() { return FindBinary("FCVM_PROMETHEUS_BIN", "/usr/bin/prometheus"); }
std::string FindPromtool() { return FindBinary("FCVM_PROMTOOL_BIN", "/usr/bin/promtool"); }

std::string PrometheusUnavailableReason() {
  if (FindPrometheus().empty() || FindPromtool().empty()) {
    return "prometheus/promtool not installed (Debian package `prometheus`; scripts/setup-deps.sh installs "
           "it)";
  }
  return "";
}

absl::StatusOr<std::unique_ptr<PrometheusServer>> PrometheusServer::Start(const PrometheusOptions& options) {
  std::string binary = FindPrometheus();
  if (binary.empty()) return absl::FailedPreconditionError(PrometheusUnavailableReason());
  std::unique_ptr<PrometheusServer> server(new PrometheusServer());
  server->options_ = options;
  char dir[] = "/tmp/fcvm-prometheus-XXXXXX";
  if (mkdtemp(dir) == nullptr) return ErrnoError("mkdtemp /tmp/fcvm-prometheus-XXXXXX");
  server->dir_ = dir;  // removed by the destructor from here on

  std::string config = absl::StrCat("global:\n  scrape_interval: ", Seconds(options.scrape_interval),
                                    "\n  scrape_timeout: ", Seconds(options.scrape_interval),
                                    "\n  evaluation_interval: ", Seconds(options.scrape_interval), "\n");
  if (!options.rule_files.empty()) absl::StrAppend(&config, "rule_files:\n");
  for (size_t i = 0; i < options.rule_files.size(); ++i) {
    std::string path = absl::StrCat(server->dir_, "/rules-", i, ".yml");
    RETURN_IF_ERROR(WriteFileAtomic(path, options.rule_files[i], 0644, /*durable=*/false));
    absl::StrAppend(&config, "  - '", path, "'\n");
  }
  absl::StrAppend(&config, "scrape_configs:\n");
  for (const ScrapeTarget& t : options.targets) {
    absl::StrAppend(&config, "  - job_name: '", t.job, "'\n    metrics_path: '", t.metrics_path,
                    "'\n    static_configs:\n      - targets: ['", t.address, "']\n");
  }
  RETURN_IF_ERROR(WriteFileAtomic(server->dir_ + "/prometheus.yml", config, 0644, /*durable=*/false));

  // The port is free when picked but may be taken before Prometheus binds it.
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    ASSIGN_OR_RETURN(int port, PickFreePort());
    last = server->Launch(binary, port);
    if (last.ok()) return server;
    if (!absl::StrContains(server->LogTail(), "address already in use")) break;
  }
  return last;
}

absl::Status PrometheusServer::Launch(const std::string& binary, int port) {
  address_ = absl::StrCat("127.0.0.1:", port);
  std::string log_path = dir_ + "/prometheus.log";
  UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!log) return ErrnoError(absl::StrCat("open ", log_path));
  SpawnOptions spawn;
  spawn.argv = {binary, "--config.file=" + dir_ + "/prometheus.yml", "--storage.tsdb.path=" + dir_ + "/data",
                "--web.listen-address=" + address_, "--log.level=info"};
  spawn.fds = {{log.get(), 1}, {log.get(), 2}};
  spawn.cwd = dir_;
  spawn.parent_death_signal = SIGKILL;
  ASSIGN_OR_RETURN(process_, Process::Spawn(spawn));

  absl::Time deadline = absl::Now() + options_.start_timeout;
  while (true) {
    absl::StatusOr<HttpResponse> ready = HttpGet(address_, "/-/ready", absl::Seconds(5));
    if (ready.ok() && ready->status == 200) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::optional<ExitStatus> exited, process_.TryWait());
    if (exited.has_value()) {
      return absl::InternalError(absl::StrCat("prometheus exited (", exited->ToString(),
                                              ") before it was ready; its log ends:\n", LogTail()));
    }
    if (absl::Now() > deadline) {
      process_.Kill().IgnoreError();
      return absl::InternalError(absl::StrCat("prometheus not ready after ",
                                              absl::FormatDuration(options_.start_timeout),
                                              "; its log ends:\n", LogTail()));
    }
    // Polling a condition with a deadline: Prometheus offers no readiness fd.
    absl::SleepFor(absl::Milliseconds(100));
  }
}

PrometheusServer::~PrometheusServer() {
  if (process_.valid() && !process_.exited()) {
    if (process_.Signal(SIGTERM).ok()) {
      absl::StatusOr<ExitStatus> st = process_.Wait(absl::Seconds(15));
      if (!st.ok()) process_.Kill().IgnoreError();
    } else {
      process_.Kill().IgnoreError();
    }
  }
  if (!dir_.empty()) RemoveTree(dir_).IgnoreError();
}

std::string PrometheusServer::LogTail(size_t max_bytes) const {
  absl::StatusOr<std::string> log = ReadFile(dir_ + "/prometheus.log");
  if (!log.ok()) return std::string(log.status().message());
  return log->size() > max_bytes ? log->substr(log->size() - max_bytes) : *log;
}

absl::StatusOr<nlohmann::json> PrometheusServer::Query(const std::string& promql) {
  absl::StatusOr<HttpResponse> r = HttpGet(address_, "/api/v1/query?query=" + UrlEncode(promql));
  if (!r.ok()) return absl::UnavailableError(absl::StrCat("query ", promql, ": ", r.status().message()));
  nlohmann::json body = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return absl::InternalError(absl::StrCat("query ", promql, ": HTTP ", r->status, ", not JSON: ", r->body));
  }
  if (body.value("status", "") != "success") {
    return absl::InvalidArgumentError(absl::StrCat("query ", promql, ": ", body.value("errorType", "?"), ": ",
                                                   body.value("error", r->body)));
  }
  return body["data"];
}

absl::StatusOr<nlohmann::json> PrometheusServer::Rules() {
  absl::StatusOr<HttpResponse> r = HttpGet(address_, "/api/v1/rules");
  if (!r.ok()) return absl::UnavailableError(absl::StrCat("rules: ", r.status().message()));
  nlohmann::json body = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object() || body.value("status", "") != "success") {
    return absl::InternalError(absl::StrCat("rules: HTTP ", r->status, ": ", r->body));
  }
  return body["data"];
}

absl::StatusOr<double> PrometheusServer::QueryValue(const std::string& promql) {
  ASSIGN_OR_RETURN(nlohmann::json data, Query(promql));
  std::string type = data.value("resultType", "");
  const nlohmann::json& result = data["result"];
  const nlohmann::json* sample = nullptr;  // [timestamp, "value"]
  if (type == "scalar") {
    sample = &result;
  } else if (type == "vector" && result.is_array()) {
    if (result.empty()) return absl::NotFoundError(absl::StrCat("query ", promql, ": no series"));
    if (result.size() > 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("query ", promql, ": ", result.size(), " series: ", result.dump()));
    }
    sample = &result[0]["value"];
  }
  if (sample == nullptr || !sample->is_array() || sample->size() != 2 || !(*sample)[1].is_string()) {
    return absl::InternalError(absl::StrCat("query ", promql, ": unexpected answer ", data.dump()));
  }
  std::string text = (*sample)[1].get<std::string>();
  double v = 0;
  if (text == "+Inf") return std::numeric_limits<double>::infinity();
  if (!absl::SimpleAtod(text, &v))
    return absl::InternalError(absl::StrCat("query ", promql, ": value ", text));
  return v;
}

absl::Status PrometheusServer::WaitForValue(const std::string& promql, double want, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  std::string last;
  while (true) {
    absl::StatusOr<double> v = QueryValue(promql);
    if (v.ok() && *v == want) return absl::OkStatus();
    last = v.ok() ? absl::StrCat(*v) : v.status().ToString();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(promql, " is not ", want, " after ", absl::FormatDuration(timeout), "; last: ", last));
    }
    // Polling with a deadline: the next scrape lands within one interval.
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::Status PrometheusServer::WaitForTargetsUp(absl::Duration timeout) {
  for (const ScrapeTarget& t : options_.targets) {
    RETURN_IF_ERROR(
        WaitForValue(absl::StrCat("up{job=\"", t.job, "\",instance=\"", t.address, "\"}"), 1, timeout));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommandResult> PromtoolCheckRules(const std::string& rules) {
  std::string promtool = FindPromtool();
  if (promtool.empty()) return absl::FailedPreconditionError(PrometheusUnavailableReason());
  char dir[] = "/tmp/fcvm-rules-XXXXXX";
  if (mkdtemp(dir) == nullptr) return ErrnoError("mkdtemp /tmp/fcvm-rules-XXXXXX");
  std::string file = std::string(dir) + "/rules.yml";
  absl::Status written = WriteFileAtomic(file, rules, 0600, /*durable=*/false);
  CommandResult r;
  if (written.ok()) r = RunCommand({promtool, "check", "rules", file}, absl::Seconds(60));
  RemoveTree(dir).IgnoreError();
  RETURN_IF_ERROR(written);
  return r;
}

absl::StatusOr<CommandResult> PromtoolCheckMetrics(const std::string& exposition) {
  std::string promtool = FindPromtool();
  if (promtool.empty()) return absl::FailedPreconditionError(PrometheusUnavailableReason());
  char path[] = "/tmp/fcvm-exposition-XXXXXX";
  UniqueFd fd(mkostemp(path, O_CLOEXEC));
  if (!fd) return ErrnoError("mkostemp /tmp/fcvm-exposition-XXXXXX");
  std::string file = path;
  fd.Reset();
  absl::Status written = WriteFileAtomic(file, exposition, 0600, /*durable=*/false);
  CommandResult r;
  if (written.ok()) r = RunCommand({promtool, "check", "metrics"}, absl::Seconds(60), file);
  unlink(file.c_str());
  RETURN_IF_ERROR(written);
  return r;
}

}  // namespace fcvm::testing
