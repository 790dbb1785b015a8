#pragma once

// A small Prometheus metrics registry and its text exposition (format 0.0.4).
//
// A Registry holds metric families. Each family has a name, help text, a type
// (counter, gauge or histogram) and a fixed, declared set of label names; its
// series are the combinations of label values seen so far, each created at zero
// on first use. Callback families compute their samples at scrape time instead
// (VMs by state, open fds).
//
// Cardinality is bounded: a family accepts at most `max_series` label
// combinations. Past that, WithLabels() hands out a detached series whose
// updates go nowhere, and the family counts the refusal; the count is exported
// as fcvm_metrics_series_dropped_total{metric="<family>"}. Label values must
// come from small fixed sets (VM states, outcomes, backends), never from ids or
// names that users create.
//
// Thread-safety: every method of Registry and of the families is thread-safe.
// Updating a series (Counter::Add, Gauge::Set, Histogram::Observe) is a few
// atomic operations and takes no lock; WithLabels() takes the family's lock, so
// hot paths look a series up once and keep the reference.
//
// Ownership: the registry owns its families and their series; references to
// them stay valid as long as the registry. Series are never removed. A callback
// family lives until its CallbackHandle is destroyed.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace fcvm::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// One series of a counter: a value that only goes up.
class Counter {
 public:
  void Increment() { Add(1); }
  // `amount` < 0 or NaN is ignored: a counter never goes down.
  void Add(double amount);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// One series of a gauge: a value that goes up and down.
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void Sub(double amount) { Add(-amount); }
  void Increment() { Add(1); }
  void Decrement() { Add(-1); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// One series of a histogram with fixed bucket upper bounds.
class Histogram {
 public:
  struct Snapshot {
    std::vector<double> upper_bounds;  // as registered, without +Inf
    // cumulative[i]: observations <= upper_bounds[i]; the last entry is +Inf
    // (== count).
    std::vector<uint64_t> cumulative;
    double sum = 0;
    uint64_t count = 0;
  };

  // `upper_bounds` must be strictly increasing and finite (the registry checks).
  explicit Histogram(std::vector<double> upper_bounds);

  // NaN is ignored (it would make the sum NaN for good).
  void Observe(double value);
  // Consistent enough for a scrape: the count is the sum of the buckets, so
  // _count always equals the +Inf bucket; _sum may lag an observation that is
  // in progress.
  Snapshot Take() const;

 private:
  std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bucket, not cumulative; last is +Inf
  std::atomic<double> sum_{0};
};

// What every family is registered with.
struct MetricDesc {
  // [a-zA-Z_:][a-zA-Z0-9_:]*, following Prometheus' conventions: a prefix
  // (fcvm_), base units in the name (_seconds, _bytes), counters end in _total.
  std::string name;
  // One line for humans; must not be empty.
  std::string help;
  // Label names, [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", not "le"
  // (histograms use it) or "quantile". WithLabels() takes values in this order.
  std::vector<std::string> labels;
  // Most label combinations the family accepts (ignored without labels).
  size_t max_series = 64;
};

namespace internal {
class FamilyBase;
template <typename Series>
class SeriesFamily;
}  // namespace internal

// A family of series of one type (Counter, Gauge or Histogram).
template <typename Series>
class Family {
 public:
  // The series for `label_values`, one per declared label name in order,
  // created at zero on first use. Never fails: a new combination past the cap,
  // or a wrong number of values, gets a detached series (updates are lost) and
  // is counted in dropped().
  Series& WithLabels(std::initializer_list<absl::string_view> label_values);
  Series& WithLabels(absl::Span<const std::string> label_values);

  size_t size() const;       // series created
  uint64_t dropped() const;  // lookups refused
  const std::string& name() const;

 private:
  friend class internal::SeriesFamily<Series>;
  explicit Family(internal::FamilyBase* impl) : impl_(impl) {}
  internal::FamilyBase* impl_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// One sample of a callback family.
struct Sample {
  std::vector<std::string> label_values;  // one per declared label name, in order
  double value = 0;
};
// Called at every scrape on the scraping thread, with no registry lock held.
// It must not block for long (a scrape waits for it) and must not register or
// remove metrics of the same registry.
using CollectFn = std::function<std::vector<Sample>()>;

// One series of a callback histogram: counts kept elsewhere (the page
// server's per-session fault latencies), handed over at scrape time.
struct HistogramSample {
  std::vector<std::string> label_values;  // one per declared label name, in order
  // Observations per bucket, NOT cumulative: one entry per registered upper
  // bound (observations above the previous bound and <= this one), then one
  // for those above the last bound (+Inf).
  std::vector<uint64_t> bucket_counts;
  double sum = 0;
};
// Same rules as CollectFn.
using HistogramCollectFn = std::function<std::vector<HistogramSample>()>;

class Registry;

// Keeps a callback family registered. Destroying (or Reset()) removes the
// family and waits for a call in progress to return, so after that the
// callback is never called again and whatever it captured may go. Move-only.
// The registry must outlive the handle.
class CallbackHandle {
 public:
  CallbackHandle() = default;
  CallbackHandle(CallbackHandle&& other) noexcept;
  CallbackHandle& operator=(CallbackHandle&& other) noexcept;
  CallbackHandle(const CallbackHandle&) = delete;
  CallbackHandle& operator=(const CallbackHandle&) = delete;
  ~CallbackHandle() { Reset(); }

  void Reset();
  bool active() const { return registry_ != nullptr; }

 private:
  friend class Registry;
  CallbackHandle(Registry* registry, std::string name) : registry_(registry), name_(std::move(name)) {}
  Registry* registry_ = nullptr;
  std::string name_;
};

// Helpers for bucket bounds: start, start*factor, ... (count values);
// start, start+width, ... (count values).
std::vector<double> ExponentialBuckets(double start, double factor, size_t count);
std::vector<double> LinearBuckets(double start, double width, size_t count);

class Registry {
 public:
  // Name of the counter family that counts refused label combinations, one
  // series per labelled family (label "metric").
  static constexpr char kDroppedSeriesName[] = "fcvm_metrics_series_dropped_total";

  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registration errors: InvalidArgument for a malformed name or label name, a
  // counter not ending in _total or another type ending in it, empty help,
  // repeated label names, max_series 0, or histogram bounds that are empty,
  // not finite or not strictly increasing; AlreadyExists when the name (or,
  // for histograms, a _bucket/_sum/_count name) collides with a registered one.
  absl::StatusOr<CounterFamily*> AddCounterFamily(MetricDesc desc);
  absl::StatusOr<GaugeFamily*> AddGaugeFamily(MetricDesc desc);
  absl::StatusOr<HistogramFamily*> AddHistogramFamily(MetricDesc desc, std::vector<double> upper_bounds);

  // Unlabelled shorthands: the family's only series. InvalidArgument if
  // desc.labels is not empty.
  absl::StatusOr<Counter*> AddCounter(MetricDesc desc);
  absl::StatusOr<Gauge*> AddGauge(MetricDesc desc);
  absl::StatusOr<Histogram*> AddHistogram(MetricDesc desc, std::vector<double> upper_bounds);

  // A counter or gauge family whose samples `collect` returns at each scrape.
  // Samples with the wrong number of label values, repeated label values, or
  // past max_series are dropped and counted. Same errors as above, and
  // InvalidArgument for kHistogram or an empty `collect`.
  absl::StatusOr<CallbackHandle> AddCallback(MetricType type, MetricDesc desc, CollectFn collect);
  // A histogram family whose series `collect` returns at each scrape. A
  // sample whose bucket_counts does not have upper_bounds.size() + 1 entries
  // is dropped and counted like a sample with the wrong labels. Errors: as
  // AddHistogramFamily, and InvalidArgument for an empty `collect`.
  absl::StatusOr<CallbackHandle> AddHistogramCallback(MetricDesc desc, std::vector<double> upper_bounds,
                                                      HistogramCollectFn collect);

  // The text exposition format 0.0.4: families sorted by name, series by label
  // values, each family with its # HELP and # TYPE lines. Families without
  // series are left out. Help text and label values are escaped (\\, \", \n)
  // and invalid UTF-8 in them is replaced by U+FFFD.
  std::string Render() const;

 private:
  friend class CallbackHandle;
  template <typename Series>
  absl::StatusOr<Family<Series>*> AddFamily(MetricType type, MetricDesc desc,
                                            std::vector<double> upper_bounds);
  template <typename Series>
  absl::StatusOr<Series*> AddSingle(MetricType type, MetricDesc desc, std::vector<double> upper_bounds);
  absl::StatusOr<internal::FamilyBase*> Add(std::shared_ptr<internal::FamilyBase> family);
  void RemoveCallback(const std::string& name);

  mutable absl::Mutex mu_;
  // By name; shared so that Render can work on a copy of the list without the
  // lock while a callback family is removed.
  std::map<std::string, std::shared_ptr<internal::FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
  // Every name a family renders (histograms: _bucket, _sum, _count too).
  std::map<std::string, std::string> taken_names_ ABSL_GUARDED_BY(mu_);
};

// Content-Type of Registry::Render's output.
inline constexpr char kExpositionContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace fcvm::metrics
