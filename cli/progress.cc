#include "cli/progress.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace fcvm::cli {
namespace {

constexpr const char* kSpinner[] = {"|", "/", "-", "\\"};

}  // namespace

Progress::Progress(std::ostream& err, std::string what, bool tty, absl::Duration interval,
                   absl::Duration line_interval)
    : err_(err),
      what_(std::move(what)),
      tty_(tty),
      interval_(interval),
      line_interval_(line_interval),
      start_(absl::Now()),
      thread_([this] { Run(); }) {}

Progress::~Progress() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (tty_) err_ << "\r\033[K" << std::flush;  // erase the line: the result follows
}

void Progress::Run() {
  const absl::Duration step = tty_ ? interval_ : line_interval_;
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t tick = 0;; ++tick) {
    if (cv_.wait_for(lock, absl::ToChronoNanoseconds(step), [this] { return done_; })) return;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
    if (tty_) {
      err_ << absl::StrFormat("\r%s %s %.1fs", kSpinner[tick % std::size(kSpinner)], what_, elapsed)
           << std::flush;
    } else {
      err_ << absl::StrFormat("%s: %.0fs\n", what_, elapsed) << std::flush;
    }
  }
}

}  // namespace fcvm::cli
