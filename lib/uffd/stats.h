#pragma once

// Page-server statistics: plain value types handed out by GetStats(), and the
// relaxed-atomic counters the loop threads bump (one writer each: the loop
// thread owning the session; any thread may read).

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace fcvm::uffd {

// Log-linear histogram of durations in nanoseconds: 4 buckets per power of
// two (about 19% resolution), up to ~2^40 ns.
class LatencyHistogram {
 public:
  static constexpr int kBuckets = 160;
  static int BucketOf(uint64_t ns);
  static uint64_t BucketUpper(int bucket);  // largest value in the bucket

  void Add(uint64_t ns) { ++buckets_[BucketOf(ns)]; }
  void Merge(const LatencyHistogram& other);
  uint64_t count() const;
  // Upper bound of the bucket holding the q-quantile (0 < q <= 1); 0 if empty.
  uint64_t PercentileNs(double q) const;
  std::array<uint64_t, kBuckets>& buckets() { return buckets_; }
  const std::array<uint64_t, kBuckets>& buckets() const { return buckets_; }

 private:
  std::array<uint64_t, kBuckets> buckets_{};
};

// Pages are counted in host base pages (4 KiB) whatever the guest's page
// size, so that counts from different guests add up: a 2 MiB page counts 512.
struct PageStats {
  uint64_t faults = 0;            // page-fault events served (one per guest page, whatever its size)
  uint64_t pages_copied = 0;      // data pages installed with UFFDIO_COPY (faults + fault-around)
  uint64_t zero_pages = 0;        // zero pages installed (UFFDIO_ZEROPAGE; huge pages: copies of zeros)
  uint64_t prefetched_pages = 0;  // pages installed by prefetch (copied or zero)
  uint64_t bytes_copied = 0;
  uint64_t eagain = 0;  // ioctls that returned EAGAIN (retried)
  uint64_t eexist = 0;  // ioctls that hit an already present page
  uint64_t remove_events = 0;
  LatencyHistogram latency;     // fault service time: event read -> page installed
  uint64_t latency_sum_ns = 0;  // sum of the fault service times in `latency`

  void Merge(const PageStats& other);
  double p50_us() const { return static_cast<double>(latency.PercentileNs(0.50)) / 1000.0; }
  double p99_us() const { return static_cast<double>(latency.PercentileNs(0.99)) / 1000.0; }
  std::string ToString() const;
};

// Written by one thread, read by any.
struct AtomicPageStats {
  std::atomic<uint64_t> faults{0}, pages_copied{0}, zero_pages{0}, prefetched_pages{0}, bytes_copied{0},
      eagain{0}, eexist{0}, remove_events{0};
  std::array<std::atomic<uint64_t>, LatencyHistogram::kBuckets> latency{};
  std::atomic<uint64_t> latency_sum_ns{0};

  static void Bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void AddLatency(uint64_t ns) {
    Bump(latency[LatencyHistogram::BucketOf(ns)]);
    Bump(latency_sum_ns, ns);
  }
  PageStats Read() const;
};

}  // namespace fcvm::uffd
