#include "lib/uffd/stats.h"

#include "absl/strings/str_format.h"

namespace fcvm::uffd {

int LatencyHistogram::BucketOf(uint64_t ns) {
  if (ns < 4) return static_cast<int>(ns);
  int msb = 63 - __builtin_clzll(ns);
  int idx = 4 * (msb - 1) + static_cast<int>((ns >> (msb - 2)) & 3);
  return idx < kBuckets ? idx : kBuckets - 1;
}

uint64_t LatencyHistogram::BucketUpper(int bucket) {
  if (bucket < 4) return static_cast<uint64_t>(bucket);
  int msb = bucket / 4 + 1;
  uint64_t sub = static_cast<uint64_t>(bucket % 4);
  uint64_t lower = (4 + sub) << (msb - 2);
  return lower + (1ull << (msb - 2)) - 1;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (int i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
}

uint64_t LatencyHistogram::count() const {
  uint64_t n = 0;
  for (uint64_t b : buckets_) n += b;
  return n;
}

uint64_t LatencyHistogram::PercentileNs(double q) const {
  uint64_t total = count();
  if (total == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(total) + 0.999999);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= rank) return BucketUpper(i);
  }
  return BucketUpper(kBuckets - 1);
}

void PageStats::Merge(const PageStats& o) {
  faults += o.faults;
  pages_copied += o.pages_copied;
  zero_pages += o.zero_pages;
  prefetched_pages += o.prefetched_pages;
  bytes_copied += o.bytes_copied;
  eagain += o.eagain;
  eexist += o.eexist;
  remove_events += o.remove_events;
  latency.Merge(o.latency);
  latency_sum_ns += o.latency_sum_ns;
}

std::string PageStats::ToString() const {
  return absl::StrFormat(
      "faults=%d copied=%d zero=%d prefetched=%d bytes=%d eagain=%d eexist=%d removes=%d p50=%.1fus "
      "p99=%.1fus",
      faults, pages_copied, zero_pages, prefetched_pages, bytes_copied, eagain, eexist, remove_events,
      p50_us(), p99_us());
}

PageStats AtomicPageStats::Read() const {
  PageStats s;
  auto r = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  s.faults = r(faults);
  s.pages_copied = r(pages_copied);
  s.zero_pages = r(zero_pages);
  s.prefetched_pages = r(prefetched_pages);
  s.bytes_copied = r(bytes_copied);
  s.eagain = r(eagain);
  s.eexist = r(eexist);
  s.remove_events = r(remove_events);
  for (int i = 0; i < LatencyHistogram::kBuckets; ++i) s.latency.buckets()[i] = r(latency[i]);
  s.latency_sum_ns = r(latency_sum_ns);
  return s;
}

}  // namespace fcvm::uffd
