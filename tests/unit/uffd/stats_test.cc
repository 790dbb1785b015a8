#include "lib/uffd/stats.h"

#include "gtest/gtest.h"

namespace fcvm::uffd {
namespace {

TEST(LatencyHistogramTest, BucketsAreMonotoneAndContainTheirValues) {
  int prev = -1;
  for (uint64_t v = 0; v < (1u << 20); v = v < 64 ? v + 1 : v + v / 7) {
    int b = LatencyHistogram::BucketOf(v);
    EXPECT_GE(b, prev);
    EXPECT_LE(v, LatencyHistogram::BucketUpper(b)) << v;
    if (b > 0) {
      EXPECT_GT(v, LatencyHistogram::BucketUpper(b - 1)) << v;
    }
    prev = b;
  }
}

TEST(LatencyHistogramTest, PercentilesWithinResolution) {
  LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.Add(static_cast<uint64_t>(i) * 1000);  // 1..1000 us
  EXPECT_EQ(h.count(), 1000u);
  double p50 = static_cast<double>(h.PercentileNs(0.5));
  double p99 = static_cast<double>(h.PercentileNs(0.99));
  EXPECT_GE(p50, 500e3);
  EXPECT_LE(p50, 500e3 * 1.26);
  EXPECT_GE(p99, 990e3);
  EXPECT_LE(p99, 990e3 * 1.26);
  EXPECT_EQ(LatencyHistogram().PercentileNs(0.5), 0u);
}

TEST(PageStatsTest, MergeAndAtomicRead) {
  AtomicPageStats a;
  AtomicPageStats::Bump(a.faults, 3);
  AtomicPageStats::Bump(a.pages_copied, 5);
  a.AddLatency(1500);
  PageStats s = a.Read();
  EXPECT_EQ(s.faults, 3u);
  s.Merge(a.Read());
  EXPECT_EQ(s.pages_copied, 10u);
  EXPECT_EQ(s.latency.count(), 2u);
}

}  // namespace
}  // namespace fcvm::uffd
