#include "lib/metrics/registry.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/metrics/text_format.h"

namespace fcvm::metrics {

// ---- series ----

void Counter::Add(double amount) {
  if (!(amount >= 0)) return;  // negative or NaN
  value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(upper_bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // First bound >= value: Prometheus buckets are "less than or equal".
  size_t i = static_cast<size_t>(std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) -
                                 upper_bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Take() const {
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  s.cumulative.resize(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> ExponentialBuckets(double start, double factor, size_t count) {
  std::vector<double> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    out.push_back(start);
    start *= factor;
  }
  return out;
}

std::vector<double> LinearBuckets(double start, double width, size_t count) {
  std::vector<double> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(start + width * static_cast<double>(i));
  return out;
}

// ---- families ----

namespace internal {
namespace {

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// {a="x",b="y"} for `names`/`values`, plus an extra label (le) when given.
void AppendLabels(std::string* out, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, absl::string_view extra_name = {},
                  absl::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return;
  out->push_back('{');
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out->push_back(',');
    absl::StrAppend(out, names[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out->push_back(',');
    absl::StrAppend(out, extra_name, "=\"", extra_value, "\"");
  }
  out->push_back('}');
}

void AppendHeader(std::string* out, const MetricDesc& desc, MetricType type) {
  absl::StrAppend(out, "# HELP ", desc.name, " ", EscapeHelp(desc.help), "\n");
  absl::StrAppend(out, "# TYPE ", desc.name, " ", TypeName(type), "\n");
}

}  // namespace

class FamilyBase {
 public:
  FamilyBase(MetricType type, MetricDesc desc) : type_(type), desc_(std::move(desc)) {}
  virtual ~FamilyBase() = default;

  MetricType type() const { return type_; }
  const MetricDesc& desc() const { return desc_; }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Appends the family's exposition; nothing when it has no series.
  virtual void Render(std::string* out) = 0;
  // Names this family renders besides desc().name.
  virtual std::vector<std::string> ExtraNames() const { return {}; }
  // Callback families: after this returns the callback is not running and
  // never runs again.
  virtual void Clear() {}

 protected:
  const MetricType type_;
  const MetricDesc desc_;
  std::atomic<uint64_t> dropped_{0};
};

template <typename Series>
class SeriesFamily : public FamilyBase {
 public:
  SeriesFamily(MetricType type, MetricDesc desc, std::vector<double> upper_bounds = {})
      : FamilyBase(type, std::move(desc)), upper_bounds_(std::move(upper_bounds)), sink_(Make()) {}

  Family<Series>* facade() { return &facade_; }

  Series& Get(std::vector<std::string> key) {
    if (key.size() != desc_.labels.size()) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return *sink_;
    }
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = series_.find(key);
      if (it != series_.end()) return *it->second;
    }
    absl::MutexLock lock(&mu_);
    auto it = series_.find(key);
    if (it != series_.end()) return *it->second;
    size_t cap = desc_.labels.empty() ? 1 : desc_.max_series;
    if (series_.size() >= cap) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return *sink_;
    }
    return *series_.emplace(std::move(key), Make()).first->second;
  }

  size_t size() const {
    absl::ReaderMutexLock lock(&mu_);
    return series_.size();
  }

  void Render(std::string* out) override {
    absl::ReaderMutexLock lock(&mu_);
    if (series_.empty()) return;
    AppendHeader(out, desc_, type_);
    for (const auto& [values, series] : series_) RenderSeries(out, values, *series);
  }

  std::vector<std::string> ExtraNames() const override {
    if (type_ != MetricType::kHistogram) return {};
    return {desc_.name + "_bucket", desc_.name + "_sum", desc_.name + "_count"};
  }

 private:
  std::unique_ptr<Series> Make() const {
    if constexpr (std::is_same_v<Series, Histogram>) {
      return std::make_unique<Histogram>(upper_bounds_);
    } else {
      return std::make_unique<Series>();
    }
  }

  void RenderSeries(std::string* out, const std::vector<std::string>& values, const Series& series) const {
    if constexpr (std::is_same_v<Series, Histogram>) {
      Histogram::Snapshot s = series.Take();
      for (size_t i = 0; i < s.cumulative.size(); ++i) {
        std::string le = i < s.upper_bounds.size() ? FormatValue(s.upper_bounds[i]) : "+Inf";
        absl::StrAppend(out, desc_.name, "_bucket");
        AppendLabels(out, desc_.labels, values, "le", le);
        absl::StrAppend(out, " ", s.cumulative[i], "\n");
      }
      absl::StrAppend(out, desc_.name, "_sum");
      AppendLabels(out, desc_.labels, values);
      absl::StrAppend(out, " ", FormatValue(s.sum), "\n");
      absl::StrAppend(out, desc_.name, "_count");
      AppendLabels(out, desc_.labels, values);
      absl::StrAppend(out, " ", s.count, "\n");
    } else {
      out->append(desc_.name);
      AppendLabels(out, desc_.labels, values);
      absl::StrAppend(out, " ", FormatValue(series.Value()), "\n");
    }
  }

  const std::vector<double> upper_bounds_;
  Family<Series> facade_{this};
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Series>> series_ ABSL_GUARDED_BY(mu_);
  // Handed out past the cap; never rendered.
  const std::unique_ptr<Series> sink_;
};

// Keeps the valid samples of a callback, in label order, at most `cap` of
// them and no label combination twice; returns how many were dropped.
template <typename S, typename Valid>
size_t FilterSamples(std::vector<S>& samples, size_t cap, Valid valid) {
  size_t before = samples.size();
  samples.erase(std::remove_if(samples.begin(), samples.end(), [&](const S& s) { return !valid(s); }),
                samples.end());
  std::stable_sort(samples.begin(), samples.end(),
                   [](const S& a, const S& b) { return a.label_values < b.label_values; });
  samples.erase(std::unique(samples.begin(), samples.end(),
                            [](const S& a, const S& b) { return a.label_values == b.label_values; }),
                samples.end());
  if (samples.size() > cap) samples.resize(cap);
  return before - samples.size();
}

// A family whose samples a callback computes at each scrape.
template <typename S>
class CallbackFamily : public FamilyBase {
 public:
  using Fn = std::function<std::vector<S>()>;
  CallbackFamily(MetricType type, MetricDesc desc, Fn collect, std::vector<double> upper_bounds = {})
      : FamilyBase(type, std::move(desc)),
        upper_bounds_(std::move(upper_bounds)),
        collect_(std::move(collect)) {}

  void Clear() override {
    absl::MutexLock lock(&call_mu_);
    collect_ = nullptr;
  }

  std::vector<std::string> ExtraNames() const override {
    if (type_ != MetricType::kHistogram) return {};
    return {desc_.name + "_bucket", desc_.name + "_sum", desc_.name + "_count"};
  }

  void Render(std::string* out) override {
    std::vector<S> samples;
    {
      absl::MutexLock lock(&call_mu_);
      if (!collect_) return;
      samples = collect_();
    }
    size_t cap = desc_.labels.empty() ? 1 : desc_.max_series;
    size_t dropped = FilterSamples(samples, cap, [this](const S& s) { return Valid(s); });
    if (dropped > 0) dropped_.fetch_add(dropped, std::memory_order_relaxed);
    if (samples.empty()) return;
    AppendHeader(out, desc_, type_);
    for (const S& s : samples) RenderSample(out, s);
  }

 private:
  bool Valid(const S& s) const {
    if (s.label_values.size() != desc_.labels.size()) return false;
    if constexpr (std::is_same_v<S, HistogramSample>) {
      return s.bucket_counts.size() == upper_bounds_.size() + 1;
    } else {
      return true;
    }
  }

  void RenderSample(std::string* out, const S& s) const {
    if constexpr (std::is_same_v<S, HistogramSample>) {
      uint64_t running = 0;
      for (size_t i = 0; i < s.bucket_counts.size(); ++i) {
        running += s.bucket_counts[i];
        std::string le = i < upper_bounds_.size() ? FormatValue(upper_bounds_[i]) : "+Inf";
        absl::StrAppend(out, desc_.name, "_bucket");
        AppendLabels(out, desc_.labels, s.label_values, "le", le);
        absl::StrAppend(out, " ", running, "\n");
      }
      absl::StrAppend(out, desc_.name, "_sum");
      AppendLabels(out, desc_.labels, s.label_values);
      absl::StrAppend(out, " ", FormatValue(s.sum), "\n");
      absl::StrAppend(out, desc_.name, "_count");
      AppendLabels(out, desc_.labels, s.label_values);
      absl::StrAppend(out, " ", running, "\n");
    } else {
      out->append(desc_.name);
      AppendLabels(out, desc_.labels, s.label_values);
      absl::StrAppend(out, " ", FormatValue(s.value), "\n");
    }
  }

  const std::vector<double> upper_bounds_;
  absl::Mutex call_mu_;
  Fn collect_ ABSL_GUARDED_BY(call_mu_);
};

}  // namespace internal

template <typename Series>
Series& Family<Series>::WithLabels(std::initializer_list<absl::string_view> label_values) {
  std::vector<std::string> key;
  key.reserve(label_values.size());
  for (absl::string_view v : label_values) key.emplace_back(v);
  return static_cast<internal::SeriesFamily<Series>*>(impl_)->Get(std::move(key));
}

template <typename Series>
Series& Family<Series>::WithLabels(absl::Span<const std::string> label_values) {
  return static_cast<internal::SeriesFamily<Series>*>(impl_)->Get(
      std::vector<std::string>(label_values.begin(), label_values.end()));
}

template <typename Series>
size_t Family<Series>::size() const {
  return static_cast<const internal::SeriesFamily<Series>*>(impl_)->size();
}

template <typename Series>
uint64_t Family<Series>::dropped() const {
  return impl_->dropped();
}

template <typename Series>
const std::string& Family<Series>::name() const {
  return impl_->desc().name;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- callback handles ----

CallbackHandle::CallbackHandle(CallbackHandle&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)), name_(std::move(other.name_)) {}

CallbackHandle& CallbackHandle::operator=(CallbackHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = std::exchange(other.registry_, nullptr);
    name_ = std::move(other.name_);
  }
  return *this;
}

void CallbackHandle::Reset() {
  if (registry_ == nullptr) return;
  std::exchange(registry_, nullptr)->RemoveCallback(name_);
}

// ---- registry ----

namespace {

absl::Status Validate(MetricType type, const MetricDesc& desc) {
  if (!IsValidMetricName(desc.name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric name '", desc.name, "' is not [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  bool total = absl::EndsWith(desc.name, "_total");
  if (type == MetricType::kCounter && !total) {
    return absl::InvalidArgumentError(absl::StrCat("counter ", desc.name, ": name must end in _total"));
  }
  if (type != MetricType::kCounter && total) {
    return absl::InvalidArgumentError(absl::StrCat(desc.name, ": only counters end in _total"));
  }
  if (desc.help.empty()) return absl::InvalidArgumentError(absl::StrCat(desc.name, ": empty help"));
  for (size_t i = 0; i < desc.labels.size(); ++i) {
    const std::string& label = desc.labels[i];
    if (!IsValidLabelName(label) || label == "le" || label == "quantile") {
      return absl::InvalidArgumentError(
          absl::StrCat(desc.name, ": label name '", label,
                       "' is not [a-zA-Z_][a-zA-Z0-9_]*, or is reserved (__*, le, quantile)"));
    }
    if (std::find(desc.labels.begin(), desc.labels.begin() + i, label) != desc.labels.begin() + i) {
      return absl::InvalidArgumentError(absl::StrCat(desc.name, ": label '", label, "' given twice"));
    }
  }
  if (!desc.labels.empty() && desc.max_series == 0) {
    return absl::InvalidArgumentError(absl::StrCat(desc.name, ": max_series must be at least 1"));
  }
  return absl::OkStatus();
}

absl::Status ValidateBounds(const std::string& name, const std::vector<double>& bounds) {
  if (bounds.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": no bucket bounds"));
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": bucket bound ", FormatValue(bounds[i]), " is not finite (+Inf is implicit)"));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": bucket bounds must increase strictly, got ",
                                                     FormatValue(bounds[i - 1]), " then ",
                                                     FormatValue(bounds[i])));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Registry::Registry() {
  // Counts refusals of every other labelled family. Registered like any
  // callback; its handle is dropped on purpose (it is removed with the
  // registry, see ~Registry).
  absl::StatusOr<CallbackHandle> dropped = AddCallback(
      MetricType::kCounter,
      {.name = kDroppedSeriesName,
       .help = "Label combinations a metric family refused because it had reached its series cap; "
               "their updates are lost.",
       .labels = {"metric"},
       .max_series = 1 << 20},
      [this] {
        std::vector<Sample> out;
        absl::MutexLock lock(&mu_);
        for (const auto& [name, family] : families_) {
          if (family->desc().labels.empty() || name == kDroppedSeriesName) continue;
          out.push_back({{name}, static_cast<double>(family->dropped())});
        }
        return out;
      });
  // Cannot fail: the name and labels are constants checked by the unit tests.
  if (dropped.ok()) dropped->registry_ = nullptr;
}

Registry::~Registry() = default;

absl::StatusOr<internal::FamilyBase*> Registry::Add(std::shared_ptr<internal::FamilyBase> family) {
  const MetricDesc& desc = family->desc();
  std::vector<std::string> names = family->ExtraNames();
  names.push_back(desc.name);
  absl::MutexLock lock(&mu_);
  for (const std::string& n : names) {
    auto it = taken_names_.find(n);
    if (it != taken_names_.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric ", desc.name, ": name ", n, " is taken by ", it->second));
    }
  }
  for (const std::string& n : names) taken_names_.emplace(n, desc.name);
  internal::FamilyBase* raw = family.get();
  families_.emplace(desc.name, std::move(family));
  return raw;
}

void Registry::RemoveCallback(const std::string& name) {
  std::shared_ptr<internal::FamilyBase> family;
  {
    absl::MutexLock lock(&mu_);
    auto it = families_.find(name);
    if (it == families_.end()) return;
    family = std::move(it->second);
    families_.erase(it);
    for (auto t = taken_names_.begin(); t != taken_names_.end();) {
      t = t->second == name ? taken_names_.erase(t) : std::next(t);
    }
  }
  // Outside the registry lock: a scrape running this callback may need it.
  family->Clear();
}

template <typename Series>
absl::StatusOr<Family<Series>*> Registry::AddFamily(MetricType type, MetricDesc desc,
                                                    std::vector<double> upper_bounds) {
  RETURN_IF_ERROR(Validate(type, desc));
  if (type == MetricType::kHistogram) RETURN_IF_ERROR(ValidateBounds(desc.name, upper_bounds));
  auto family =
      std::make_shared<internal::SeriesFamily<Series>>(type, std::move(desc), std::move(upper_bounds));
  Family<Series>* facade = family->facade();
  RETURN_IF_ERROR(Add(std::move(family)).status());
  return facade;
}

template <typename Series>
absl::StatusOr<Series*> Registry::AddSingle(MetricType type, MetricDesc desc,
                                            std::vector<double> upper_bounds) {
  if (!desc.labels.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(desc.name, ": labels given for an unlabelled metric"));
  }
  ASSIGN_OR_RETURN(Family<Series> * family,
                   AddFamily<Series>(type, std::move(desc), std::move(upper_bounds)));
  return &family->WithLabels(absl::Span<const std::string>());
}

absl::StatusOr<CounterFamily*> Registry::AddCounterFamily(MetricDesc desc) {
  return AddFamily<Counter>(MetricType::kCounter, std::move(desc), {});
}

absl::StatusOr<GaugeFamily*> Registry::AddGaugeFamily(MetricDesc desc) {
  return AddFamily<Gauge>(MetricType::kGauge, std::move(desc), {});
}

absl::StatusOr<HistogramFamily*> Registry::AddHistogramFamily(MetricDesc desc,
                                                              std::vector<double> upper_bounds) {
  return AddFamily<Histogram>(MetricType::kHistogram, std::move(desc), std::move(upper_bounds));
}

absl::StatusOr<Counter*> Registry::AddCounter(MetricDesc desc) {
  return AddSingle<Counter>(MetricType::kCounter, std::move(desc), {});
}

absl::StatusOr<Gauge*> Registry::AddGauge(MetricDesc desc) {
  return AddSingle<Gauge>(MetricType::kGauge, std::move(desc), {});
}

absl::StatusOr<Histogram*> Registry::AddHistogram(MetricDesc desc, std::vector<double> upper_bounds) {
  return AddSingle<Histogram>(MetricType::kHistogram, std::move(desc), std::move(upper_bounds));
}

absl::StatusOr<CallbackHandle> Registry::AddCallback(MetricType type, MetricDesc desc, CollectFn collect) {
  if (type == MetricType::kHistogram) {
    return absl::InvalidArgumentError(absl::StrCat(desc.name, ": callback histograms are not supported"));
  }
  if (!collect) return absl::InvalidArgumentError(absl::StrCat(desc.name, ": no callback"));
  RETURN_IF_ERROR(Validate(type, desc));
  std::string name = desc.name;
  RETURN_IF_ERROR(
      Add(std::make_shared<internal::CallbackFamily<Sample>>(type, std::move(desc), std::move(collect)))
          .status());
  return CallbackHandle(this, std::move(name));
}

absl::StatusOr<CallbackHandle> Registry::AddHistogramCallback(MetricDesc desc,
                                                              std::vector<double> upper_bounds,
                                                              HistogramCollectFn collect) {
  if (!collect) return absl::InvalidArgumentError(absl::StrCat(desc.name, ": no callback"));
  RETURN_IF_ERROR(Validate(MetricType::kHistogram, desc));
  RETURN_IF_ERROR(ValidateBounds(desc.name, upper_bounds));
  std::string name = desc.name;
  RETURN_IF_ERROR(
      Add(std::make_shared<internal::CallbackFamily<HistogramSample>>(
              MetricType::kHistogram, std::move(desc), std::move(collect), std::move(upper_bounds)))
          .status());
  return CallbackHandle(this, std::move(name));
}

std::string Registry::Render() const {
  std::vector<std::shared_ptr<internal::FamilyBase>> families;
  {
    absl::MutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& [name, family] : families_) families.push_back(family);
  }
  // Without the registry lock: callbacks may take locks of their own (and the
  // dropped-series callback takes this one).
  std::string out;
  for (const auto& family : families) family->Render(&out);
  return out;
}

}  // namespace fcvm::metrics
