#pragma once

// Logging setup. fcvm logs through spdlog's default logger; call InitLogging
// once from main. Under systemd (JOURNAL_STREAM names our stderr) records go
// to the journal with their priority; elsewhere to stderr with timestamps.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spdlog/fmt/fmt.h"

namespace fcvm {

// `level`: trace, debug, info, warn, error or off. InvalidArgument otherwise.
absl::Status InitLogging(absl::string_view level, absl::string_view program);

// True when stderr is connected to the systemd journal.
bool StderrIsJournal();

}  // namespace fcvm

// Debian's abseil has its own string_view (not std::string_view), which fmt
// cannot format by itself; these let spdlog take absl types directly:
// spdlog::warn("x: {}", status) or ("{}", status.message()).
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(const absl::Status& st, FormatContext& ctx) const {
    std::string text = st.ToString();
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(text), ctx);
  }
};
