#include "lib/metrics/registry.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/metrics/text_format.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::metrics {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

// The registry's own family, present in every exposition that has a labelled
// family: strip it where a test looks at something else.
std::string WithoutDropped(const std::string& text) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StrContains(line, Registry::kDroppedSeriesName)) continue;
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

TEST(TextFormatTest, FormatsValues) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(1), "1");
  EXPECT_EQ(FormatValue(-2.5), "-2.5");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(0.005), "0.005");
  EXPECT_EQ(FormatValue(1234567), "1234567");
  EXPECT_EQ(FormatValue(1e6), "1000000");
  EXPECT_EQ(FormatValue(-4e14), "-400000000000000");
  EXPECT_EQ(FormatValue(1e15), "1e+15");
  EXPECT_EQ(FormatValue(1e-7), "1e-07");
  EXPECT_EQ(FormatValue(2.5e20), "2.5e+20");
  EXPECT_EQ(FormatValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
}

TEST(TextFormatTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(EscapeHelp("a\\b\"c\nd"), "a\\\\b\"c\\nd");  // quotes stay in help
  EXPECT_EQ(EscapeLabelValue("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
            "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  // A stray continuation byte, a truncated sequence, an overlong '/', a
  // surrogate: each bad byte becomes U+FFFD.
  EXPECT_EQ(EscapeLabelValue("a\x80z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(EscapeLabelValue("a\xE2\x82"), "a\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(EscapeLabelValue("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(EscapeLabelValue("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TextFormatTest, ChecksNames) {
  EXPECT_TRUE(IsValidMetricName("fcvm_clones_total"));
  EXPECT_TRUE(IsValidMetricName("a:b_c9"));
  EXPECT_TRUE(IsValidMetricName("_x"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9x"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_FALSE(IsValidMetricName("a b"));
  EXPECT_TRUE(IsValidLabelName("state"));
  EXPECT_TRUE(IsValidLabelName("_a1"));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("1a"));
  EXPECT_FALSE(IsValidLabelName(""));
}

TEST(RegistryTest, RendersEveryTypeExactly) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(CounterFamily * clones,
                       r.AddCounterFamily({.name = "fcvm_clones_total",
                                           .help = "Clones made.\nBy backend \\ outcome.",
                                           .labels = {"backend", "outcome"}}));
  ASSERT_OK_AND_ASSIGN(Gauge * vms, r.AddGauge({.name = "fcvm_vms", .help = "VMs \"known\"."}));
  ASSERT_OK_AND_ASSIGN(HistogramFamily * latency, r.AddHistogramFamily({.name = "fcvm_clone_duration_seconds",
                                                                        .help = "Time to restore a clone.",
                                                                        .labels = {"backend"}},
                                                                       {0.01, 0.1, 1}));
  ASSERT_OK_AND_ASSIGN(Histogram * plain,
                       r.AddHistogram({.name = "a_plain_seconds", .help = "Unlabelled."}, {0.5}));
  clones->WithLabels({"uffd", "ok"}).Add(3);
  clones->WithLabels({"file", "ok"}).Increment();
  clones->WithLabels({"uffd", "error \"x\"\nline2\\"}).Increment();
  vms->Set(7);
  vms->Sub(0.5);
  Histogram& uffd = latency->WithLabels({"uffd"});
  uffd.Observe(0.005);
  uffd.Observe(0.01);  // on a bound: counts in that bucket
  uffd.Observe(0.5);
  uffd.Observe(30);
  latency->WithLabels({"file"});  // created, never observed
  plain->Observe(-1);

  EXPECT_EQ(r.Render(),
            "# HELP a_plain_seconds Unlabelled.\n"
            "# TYPE a_plain_seconds histogram\n"
            "a_plain_seconds_bucket{le=\"0.5\"} 1\n"
            "a_plain_seconds_bucket{le=\"+Inf\"} 1\n"
            "a_plain_seconds_sum -1\n"
            "a_plain_seconds_count 1\n"
            "# HELP fcvm_clone_duration_seconds Time to restore a clone.\n"
            "# TYPE fcvm_clone_duration_seconds histogram\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"file\",le=\"0.01\"} 0\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"file\",le=\"0.1\"} 0\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"file\",le=\"1\"} 0\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"file\",le=\"+Inf\"} 0\n"
            "fcvm_clone_duration_seconds_sum{backend=\"file\"} 0\n"
            "fcvm_clone_duration_seconds_count{backend=\"file\"} 0\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"uffd\",le=\"0.01\"} 2\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"uffd\",le=\"0.1\"} 2\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"uffd\",le=\"1\"} 3\n"
            "fcvm_clone_duration_seconds_bucket{backend=\"uffd\",le=\"+Inf\"} 4\n"
            "fcvm_clone_duration_seconds_sum{backend=\"uffd\"} 30.515\n"
            "fcvm_clone_duration_seconds_count{backend=\"uffd\"} 4\n"
            "# HELP fcvm_clones_total Clones made.\\nBy backend \\\\ outcome.\n"
            "# TYPE fcvm_clones_total counter\n"
            "fcvm_clones_total{backend=\"file\",outcome=\"ok\"} 1\n"
            "fcvm_clones_total{backend=\"uffd\",outcome=\"error \\\"x\\\"\\nline2\\\\\"} 1\n"
            "fcvm_clones_total{backend=\"uffd\",outcome=\"ok\"} 3\n"
            "# HELP fcvm_metrics_series_dropped_total Label combinations a metric family refused because it "
            "had reached its series cap; their updates are lost.\n"
            "# TYPE fcvm_metrics_series_dropped_total counter\n"
            "fcvm_metrics_series_dropped_total{metric=\"fcvm_clone_duration_seconds\"} 0\n"
            "fcvm_metrics_series_dropped_total{metric=\"fcvm_clones_total\"} 0\n"
            "# HELP fcvm_vms VMs \"known\".\n"
            "# TYPE fcvm_vms gauge\n"
            "fcvm_vms 6.5\n");
}

TEST(RegistryTest, LeavesOutFamiliesWithoutSeries) {
  Registry r;
  EXPECT_EQ(r.Render(), "");
  ASSERT_OK(r.AddGaugeFamily({.name = "g", .help = "h", .labels = {"x"}}).status());
  EXPECT_EQ(
      r.Render(),
      "# HELP fcvm_metrics_series_dropped_total Label combinations a metric family refused because it had "
      "reached its series cap; their updates are lost.\n"
      "# TYPE fcvm_metrics_series_dropped_total counter\n"
      "fcvm_metrics_series_dropped_total{metric=\"g\"} 0\n");
}

TEST(RegistryTest, SameLabelsSameSeries) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(CounterFamily * f,
                       r.AddCounterFamily({.name = "c_total", .help = "h", .labels = {"a"}}));
  Counter& one = f->WithLabels({"x"});
  std::vector<std::string> values = {"x"};
  EXPECT_EQ(&one, &f->WithLabels(values));
  EXPECT_NE(&one, &f->WithLabels({"y"}));
  EXPECT_EQ(f->size(), 2u);
  EXPECT_EQ(f->name(), "c_total");
}

TEST(RegistryTest, RefusesBadRegistrations) {
  Registry r;
  auto bad = [&](MetricDesc d) { return r.AddGaugeFamily(std::move(d)).status(); };
  EXPECT_THAT(bad({.name = "9bad", .help = "h"}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(bad({.name = "g", .help = ""}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("help")));
  EXPECT_THAT(bad({.name = "g_total", .help = "h"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("only counters")));
  EXPECT_THAT(bad({.name = "g", .help = "h", .labels = {"le"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(bad({.name = "g", .help = "h", .labels = {"__x"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(bad({.name = "g", .help = "h", .labels = {"a-b"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(bad({.name = "g", .help = "h", .labels = {"a", "a"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
  EXPECT_THAT(bad({.name = "g", .help = "h", .labels = {"a"}, .max_series = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r.AddCounter({.name = "requests", .help = "h"}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("_total")));
  EXPECT_THAT(r.AddCounter({.name = "c_total", .help = "h", .labels = {"a"}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  for (std::vector<double> bounds : std::vector<std::vector<double>>{
           {}, {1, 1}, {2, 1}, {1, std::numeric_limits<double>::infinity()}, {std::nan("")}}) {
    EXPECT_THAT(r.AddHistogram({.name = "h_seconds", .help = "h"}, bounds).status(),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(
      r.AddCallback(MetricType::kHistogram, {.name = "x", .help = "h"}, [] { return std::vector<Sample>{}; })
          .status(),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r.AddCallback(MetricType::kGauge, {.name = "x", .help = "h"}, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Nothing above was registered.
  EXPECT_EQ(r.Render(), "");
}

TEST(RegistryTest, RefusesCollidingNames) {
  Registry r;
  ASSERT_OK(r.AddGauge({.name = "x", .help = "h"}).status());
  EXPECT_THAT(r.AddGauge({.name = "x", .help = "h"}).status(), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK(r.AddHistogram({.name = "lat_seconds", .help = "h"}, {1}).status());
  EXPECT_THAT(r.AddGauge({.name = "lat_seconds_count", .help = "h"}).status(),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("lat_seconds")));
  ASSERT_OK(r.AddGauge({.name = "q_sum", .help = "h"}).status());
  EXPECT_THAT(r.AddHistogram({.name = "q", .help = "h"}, {1}).status(),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(r.AddCounter({.name = Registry::kDroppedSeriesName, .help = "h"}).status(),
              StatusIs(absl::StatusCode::kAlreadyExists));
}

TEST(RegistryTest, CounterOnlyGoesUp) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(Counter * c, r.AddCounter({.name = "c_total", .help = "h"}));
  c->Add(2);
  c->Add(-1);
  c->Add(std::nan(""));
  c->Add(0.5);
  EXPECT_EQ(c->Value(), 2.5);
}

TEST(RegistryTest, HistogramIgnoresNaN) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(Histogram * h, r.AddHistogram({.name = "h", .help = "h"}, {1, 2}));
  h->Observe(std::nan(""));
  h->Observe(1.5);
  Histogram::Snapshot s = h->Take();
  EXPECT_EQ(s.count, 1u);
  EXPECT_EQ(s.sum, 1.5);
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{0, 1, 1}));
}

TEST(RegistryTest, BucketHelpers) {
  EXPECT_EQ(ExponentialBuckets(0.001, 2, 4), (std::vector<double>{0.001, 0.002, 0.004, 0.008}));
  EXPECT_EQ(LinearBuckets(1, 0.5, 3), (std::vector<double>{1, 1.5, 2}));
}

TEST(RegistryTest, CapsLabelCombinationsAndCountsDrops) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(
      CounterFamily * f,
      r.AddCounterFamily({.name = "c_total", .help = "h", .labels = {"k"}, .max_series = 2}));
  f->WithLabels({"a"}).Increment();
  f->WithLabels({"b"}).Increment();
  Counter& over = f->WithLabels({"c"});
  over.Add(100);  // lost
  Counter& over2 = f->WithLabels({"d"});
  EXPECT_EQ(&over, &over2);          // the detached series
  f->WithLabels({"a"}).Increment();  // existing combinations still work
  f->WithLabels({"a", "extra"});     // wrong arity: counted too
  f->WithLabels({});
  EXPECT_EQ(f->size(), 2u);
  EXPECT_EQ(f->dropped(), 4u);
  EXPECT_EQ(
      r.Render(),
      "# HELP c_total h\n"
      "# TYPE c_total counter\n"
      "c_total{k=\"a\"} 2\n"
      "c_total{k=\"b\"} 1\n"
      "# HELP fcvm_metrics_series_dropped_total Label combinations a metric family refused because it had "
      "reached its series cap; their updates are lost.\n"
      "# TYPE fcvm_metrics_series_dropped_total counter\n"
      "fcvm_metrics_series_dropped_total{metric=\"c_total\"} 4\n");
}

TEST(RegistryTest, CallbackFamiliesAreComputedAtScrape) {
  Registry r;
  std::vector<Sample> now = {{{"running"}, 3}, {{"paused"}, 1}};
  ASSERT_OK_AND_ASSIGN(
      CallbackHandle h,
      r.AddCallback(MetricType::kGauge, {.name = "vms", .help = "VMs by state.", .labels = {"state"}},
                    [&now] { return now; }));
  EXPECT_TRUE(h.active());
  EXPECT_EQ(
      WithoutDropped(r.Render()),
      "# HELP vms VMs by state.\n# TYPE vms gauge\nvms{state=\"paused\"} 1\nvms{state=\"running\"} 3\n");
  now = {{{"running"}, 4}};
  EXPECT_EQ(WithoutDropped(r.Render()),
            "# HELP vms VMs by state.\n# TYPE vms gauge\nvms{state=\"running\"} 4\n");
  EXPECT_THAT(r.AddGauge({.name = "vms", .help = "h"}).status(), StatusIs(absl::StatusCode::kAlreadyExists));

  h.Reset();
  EXPECT_FALSE(h.active());
  EXPECT_EQ(r.Render(), "");
  // The name is free again.
  ASSERT_OK_AND_ASSIGN(CallbackHandle again,
                       r.AddCallback(MetricType::kCounter, {.name = "vms_total", .help = "h"}, [] {
                         return std::vector<Sample>{{{}, 2}};
                       }));
  ASSERT_OK(r.AddGauge({.name = "vms", .help = "h"}).status());
  EXPECT_THAT(r.Render(), HasSubstr("# TYPE vms_total counter\nvms_total 2\n"));
}

TEST(RegistryTest, CallbackSamplesAreCappedAndChecked) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(
      CallbackHandle h,
      r.AddCallback(MetricType::kGauge, {.name = "g", .help = "h", .labels = {"k"}, .max_series = 2}, [] {
        return std::vector<Sample>{{{"d"}, 4}, {{"a"}, 1}, {{"a"}, 9}, {{"c"}, 3}, {{"b", "x"}, 5}, {{}, 6}};
      }));
  // Sorted, first of a repeated combination kept, wrong arity and past the cap
  // dropped: {"a",9} repeat, {"b","x"} and {} arity, "d" past the cap.
  EXPECT_EQ(
      r.Render(),
      "# HELP fcvm_metrics_series_dropped_total Label combinations a metric family refused because it had "
      "reached its series cap; their updates are lost.\n"
      "# TYPE fcvm_metrics_series_dropped_total counter\n"
      "fcvm_metrics_series_dropped_total{metric=\"g\"} 0\n"
      "# HELP g h\n# TYPE g gauge\ng{k=\"a\"} 1\ng{k=\"c\"} 3\n");
  // The drops of that scrape show in the next.
  EXPECT_THAT(r.Render(), HasSubstr("fcvm_metrics_series_dropped_total{metric=\"g\"} 4\n"));
}

TEST(RegistryTest, CallbackHistogramsRenderCumulativeBuckets) {
  Registry r;
  std::vector<HistogramSample> now = {{{"b"}, {1, 0, 2}, 7.5}, {{"a"}, {0, 3, 0}, 1.25}};
  ASSERT_OK_AND_ASSIGN(CallbackHandle h,
                       r.AddHistogramCallback({.name = "lat_seconds", .help = "Latency.", .labels = {"k"}},
                                              {0.5, 1}, [&now] { return now; }));
  EXPECT_EQ(WithoutDropped(r.Render()),
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{k=\"a\",le=\"0.5\"} 0\n"
            "lat_seconds_bucket{k=\"a\",le=\"1\"} 3\n"
            "lat_seconds_bucket{k=\"a\",le=\"+Inf\"} 3\n"
            "lat_seconds_sum{k=\"a\"} 1.25\n"
            "lat_seconds_count{k=\"a\"} 3\n"
            "lat_seconds_bucket{k=\"b\",le=\"0.5\"} 1\n"
            "lat_seconds_bucket{k=\"b\",le=\"1\"} 1\n"
            "lat_seconds_bucket{k=\"b\",le=\"+Inf\"} 3\n"
            "lat_seconds_sum{k=\"b\"} 7.5\n"
            "lat_seconds_count{k=\"b\"} 3\n");
  // The names a histogram renders are taken while it is registered.
  EXPECT_THAT(r.AddGauge({.name = "lat_seconds_count", .help = "h"}).status(),
              StatusIs(absl::StatusCode::kAlreadyExists));
  // A sample with the wrong number of buckets is dropped and counted.
  now = {{{"a"}, {1, 1}, 0}, {{"c"}, {0, 0, 1}, 2}};
  EXPECT_EQ(WithoutDropped(r.Render()),
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{k=\"c\",le=\"0.5\"} 0\n"
            "lat_seconds_bucket{k=\"c\",le=\"1\"} 0\n"
            "lat_seconds_bucket{k=\"c\",le=\"+Inf\"} 1\n"
            "lat_seconds_sum{k=\"c\"} 2\n"
            "lat_seconds_count{k=\"c\"} 1\n");
  EXPECT_THAT(r.Render(), HasSubstr("fcvm_metrics_series_dropped_total{metric=\"lat_seconds\"} 1\n"));
  // Bad registrations.
  EXPECT_THAT(r.AddHistogramCallback({.name = "x_seconds", .help = "h"}, {},
                                     [] { return std::vector<HistogramSample>{}; })
                  .status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r.AddHistogramCallback({.name = "x_total", .help = "h"}, {1},
                                     [] { return std::vector<HistogramSample>{}; })
                  .status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r.AddHistogramCallback({.name = "x_seconds", .help = "h"}, {1}, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  h.Reset();
  EXPECT_EQ(r.Render(), "");
  ASSERT_OK(r.AddGauge({.name = "lat_seconds_count", .help = "h"}).status());
}

TEST(RegistryTest, HandleResetWaitsForRunningCallback) {
  Registry r;
  absl::Notification entered, release, reset_starting;
  std::atomic<bool> reset_returned{false};
  std::atomic<bool> reset_seen_by_callback{false};
  std::atomic<int> calls{0};
  ASSERT_OK_AND_ASSIGN(CallbackHandle h, r.AddCallback(MetricType::kGauge, {.name = "g", .help = "h"}, [&] {
    calls.fetch_add(1);
    entered.Notify();
    release.WaitForNotification();
    reset_seen_by_callback = reset_returned.load();
    return std::vector<Sample>{{{}, 1}};
  }));
  std::string scraped;
  std::thread scraper([&] { scraped = r.Render(); });
  entered.WaitForNotification();
  std::thread resetter([&] {
    reset_starting.Notify();
    h.Reset();
    reset_returned = true;
  });
  reset_starting.WaitForNotification();
  release.Notify();
  resetter.join();
  scraper.join();
  // Reset returned only after the callback had finished.
  EXPECT_FALSE(reset_seen_by_callback.load());
  EXPECT_EQ(scraped, "# HELP g h\n# TYPE g gauge\ng 1\n");
  EXPECT_EQ(r.Render(), "");
  EXPECT_EQ(calls.load(), 1);
}

TEST(RegistryTest, MovedHandleKeepsTheFamily) {
  Registry r;
  CallbackHandle outer;
  {
    ASSERT_OK_AND_ASSIGN(CallbackHandle h, r.AddCallback(MetricType::kGauge, {.name = "g", .help = "h"}, [] {
      return std::vector<Sample>{{{}, 1}};
    }));
    outer = std::move(h);
  }
  EXPECT_EQ(r.Render(), "# HELP g h\n# TYPE g gauge\ng 1\n");
  outer = CallbackHandle();
  EXPECT_EQ(r.Render(), "");
}

TEST(RegistryTest, ConcurrentUpdatesAreExact) {
  Registry r;
  ASSERT_OK_AND_ASSIGN(CounterFamily * counters,
                       r.AddCounterFamily({.name = "c_total", .help = "h", .labels = {"worker"}}));
  ASSERT_OK_AND_ASSIGN(Counter * shared, r.AddCounter({.name = "shared_total", .help = "h"}));
  ASSERT_OK_AND_ASSIGN(Gauge * gauge, r.AddGauge({.name = "g", .help = "h"}));
  ASSERT_OK_AND_ASSIGN(
      HistogramFamily * hist,
      r.AddHistogramFamily({.name = "h_seconds", .help = "h", .labels = {"kind"}}, {1, 2, 3}));
  constexpr int kThreads = 8;
  constexpr int kIterations = 50000;
  std::atomic<bool> done{false};
  // A scraper renders all along: no torn lines, no deadlock.
  int scrapes = 0;
  std::thread scraper([&] {
    while (!done.load()) {
      std::string text = r.Render();
      EXPECT_THAT(text, Not(HasSubstr("NaN")));
      ++scrapes;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Every thread creates the same two series concurrently, and its own.
      Histogram& h = hist->WithLabels({"same"});
      Counter& mine = counters->WithLabels({std::to_string(t % 4)});
      for (int i = 0; i < kIterations; ++i) {
        shared->Increment();
        mine.Increment();
        gauge->Increment();
        gauge->Decrement();
        gauge->Add(1);
        h.Observe(static_cast<double>(i % 4));  // 0, 1, 2, 3
      }
    });
  }
  for (auto& th : threads) th.join();
  done = true;
  scraper.join();
  EXPECT_GT(scrapes, 0);

  EXPECT_EQ(shared->Value(), kThreads * kIterations);
  EXPECT_EQ(gauge->Value(), kThreads * kIterations);
  EXPECT_EQ(counters->size(), 4u);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(counters->WithLabels({std::to_string(k)}).Value(), 2 * kIterations);
  }
  EXPECT_EQ(hist->size(), 1u);
  Histogram::Snapshot s = hist->WithLabels({"same"}).Take();
  const uint64_t n = static_cast<uint64_t>(kThreads) * kIterations;
  EXPECT_EQ(s.count, n);
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{n / 2, 3 * n / 4, n, n}));
  EXPECT_EQ(s.sum, static_cast<double>(n / 4 * (0 + 1 + 2 + 3)));
  EXPECT_THAT(r.Render(), HasSubstr(absl::StrCat("shared_total ", n, "\n")));
}

}  // namespace
}  // namespace fcvm::metrics
