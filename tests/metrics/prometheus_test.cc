// lib/metrics against the real thing: a Prometheus server scrapes a
// MetricsServer in this process while the test counts "clones", and its query
// API must report exactly what the test did; promtool must find nothing wrong
// with the exposition. Skipped, saying why, without the `prometheus` package.

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/metrics/http_server.h"
#include "lib/metrics/process_metrics.h"
#include "lib/metrics/registry.h"
#include "tests/testing/http_client.h"
#include "tests/testing/prometheus.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::metrics {
namespace {

using ::fcvm::testing::PrometheusServer;
using ::testing::HasSubstr;

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason = ::fcvm::testing::PrometheusUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
  }
};

TEST_F(PrometheusTest, ScrapedCountsEqualWhatWasDone) {
  Registry registry;
  ASSERT_OK_AND_ASSIGN(CounterFamily * clones, registry.AddCounterFamily({.name = "fcvm_test_clones_total",
                                                                          .help = "Clones made by the test.",
                                                                          .labels = {"backend"}}));
  ASSERT_OK_AND_ASSIGN(HistogramFamily * durations,
                       registry.AddHistogramFamily({.name = "fcvm_test_clone_duration_seconds",
                                                    .help = "Made-up clone durations.",
                                                    .labels = {"backend"}},
                                                   {0.005, 0.01, 0.05, 0.1}));
  ASSERT_OK_AND_ASSIGN(std::vector<CallbackHandle> process, AddProcessMetrics(registry));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                       MetricsServer::Start(&registry, {.address = "127.0.0.1:0"}));
  const std::string target = server->address().ToString();

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PrometheusServer> prom,
                       PrometheusServer::Start({.targets = {{.job = "fcvm-test", .address = target}}}));
  ASSERT_OK(prom->WaitForTargetsUp()) << prom->LogTail();

  // Clones in batches; each batch is scraped before the next starts, so the
  // totals are built up over several scrapes.
  Counter& uffd = clones->WithLabels({"uffd"});
  Histogram& uffd_duration = durations->WithLabels({"uffd"});
  const std::string sel = absl::StrCat("{job=\"fcvm-test\",backend=\"uffd\"}");
  int done = 0;
  int at_most_10ms = 0;
  double sum = 0;
  for (int batch = 0; batch < 4; ++batch) {
    for (int i = 0; i < 10; ++i, ++done) {
      double seconds = 0.002 * done;  // 0 .. 0.078
      uffd.Increment();
      uffd_duration.Observe(seconds);
      sum += seconds;
      if (seconds <= 0.01) ++at_most_10ms;
    }
    ASSERT_OK(prom->WaitForValue("fcvm_test_clones_total" + sel, done)) << prom->LogTail();
  }
  EXPECT_EQ(done, 40);
  EXPECT_OK(prom->WaitForValue("fcvm_test_clone_duration_seconds_count" + sel, done));
  ASSERT_OK_AND_ASSIGN(double scraped_sum, prom->QueryValue("fcvm_test_clone_duration_seconds_sum" + sel));
  EXPECT_DOUBLE_EQ(scraped_sum, sum);
  EXPECT_OK(prom->WaitForValue(
      "fcvm_test_clone_duration_seconds_bucket{job=\"fcvm-test\",backend=\"uffd\",le=\"0.01\"}",
      at_most_10ms));
  EXPECT_OK(prom->WaitForValue(
      "fcvm_test_clone_duration_seconds_bucket{job=\"fcvm-test\",backend=\"uffd\",le=\"+Inf\"}", done));
  // Prometheus saw the counter grow across scrapes, never reset.
  EXPECT_OK(prom->WaitForValue("resets(fcvm_test_clones_total" + sel + "[5m])", 0));
  // Only the one label combination exists.
  EXPECT_OK(prom->WaitForValue("count(fcvm_test_clones_total{job=\"fcvm-test\"})", 1));
  // Process metrics arrive with their conventional names.
  ASSERT_OK_AND_ASSIGN(double fds, prom->QueryValue("process_open_fds{job=\"fcvm-test\"}"));
  EXPECT_GT(fds, 0);
  ASSERT_OK_AND_ASSIGN(double rss, prom->QueryValue("process_resident_memory_bytes{job=\"fcvm-test\"}"));
  EXPECT_GT(rss, 0);
  // The scrape itself was clean: Prometheus reports every sample it took.
  ASSERT_OK_AND_ASSIGN(double samples, prom->QueryValue("scrape_samples_scraped{job=\"fcvm-test\"}"));
  EXPECT_GT(samples, 10);
}

TEST_F(PrometheusTest, PromtoolFindsNoProblemInTheExposition) {
  // Every kind of family, escaping, process metrics, the dropped-series
  // counter, fetched through the HTTP endpoint as a scraper sees it.
  Registry registry;
  ASSERT_OK_AND_ASSIGN(CounterFamily * c,
                       registry.AddCounterFamily({.name = "fcvm_test_requests_total",
                                                  .help = "Requests \"quoted\"\nsecond line \\.",
                                                  .labels = {"method", "code"},
                                                  .max_series = 2}));
  c->WithLabels({"GET", "200"}).Add(10);
  c->WithLabels({"weird \"value\"\n\\", "500"}).Increment();
  c->WithLabels({"over", "cap"}).Increment();
  ASSERT_OK_AND_ASSIGN(Gauge * g,
                       registry.AddGauge({.name = "fcvm_test_temperature_celsius", .help = "A gauge."}));
  g->Set(-3.25);
  ASSERT_OK_AND_ASSIGN(Histogram * h, registry.AddHistogram({.name = "fcvm_test_request_duration_seconds",
                                                             .help = "A histogram."},
                                                            ExponentialBuckets(0.001, 10, 5)));
  h->Observe(0.5);
  h->Observe(2000);
  ASSERT_OK_AND_ASSIGN(
      CallbackHandle cb,
      registry.AddCallback(MetricType::kGauge,
                           {.name = "fcvm_test_vms", .help = "VMs by state.", .labels = {"state"}}, [] {
                             return std::vector<Sample>{{{"running"}, 2}, {{"caf\xC3\xA9"}, 1}};
                           }));
  ASSERT_OK_AND_ASSIGN(std::vector<CallbackHandle> process, AddProcessMetrics(registry));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                       MetricsServer::Start(&registry, {.address = "127.0.0.1:0"}));
  ASSERT_OK_AND_ASSIGN(::fcvm::testing::HttpResponse r,
                       ::fcvm::testing::HttpGet(server->address().ToString(), "/metrics"));
  ASSERT_EQ(r.status, 200);
  ASSERT_THAT(r.body,
              HasSubstr("fcvm_metrics_series_dropped_total{metric=\"fcvm_test_requests_total\"} 1\n"));

  ASSERT_OK_AND_ASSIGN(::fcvm::testing::CommandResult check, ::fcvm::testing::PromtoolCheckMetrics(r.body));
  EXPECT_EQ(check.code, 0) << check.out << check.err;
  EXPECT_EQ(check.out + check.err, "") << r.body;
}

TEST_F(PrometheusTest, PromtoolCatchesABadExposition) {
  // The check above can fail: promtool does flag convention breaches.
  ASSERT_OK_AND_ASSIGN(
      ::fcvm::testing::CommandResult check,
      ::fcvm::testing::PromtoolCheckMetrics("# HELP requests Requests.\n# TYPE requests counter\n"
                                            "requests 1\n"));
  EXPECT_NE(check.code, 0);
  EXPECT_THAT(check.out + check.err, HasSubstr("_total"));
}

}  // namespace
}  // namespace fcvm::metrics
