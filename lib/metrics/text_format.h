#pragma once

// Pieces of the Prometheus text exposition format 0.0.4 that the registry
// uses: name checks, escaping and number formatting. Pure functions, safe
// from any thread.

#include <string>

#include "absl/strings/string_view.h"

namespace fcvm::metrics {

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(absl::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved for Prometheus).
bool IsValidLabelName(absl::string_view name);

// A label value between the quotes: backslash, double quote and newline become
// \\, \" and \n. Invalid UTF-8 sequences become U+FFFD, since Prometheus
// refuses the whole scrape otherwise.
std::string EscapeLabelValue(absl::string_view value);
// Help text after "# HELP name ": backslash and newline become \\ and \n;
// invalid UTF-8 as above.
std::string EscapeHelp(absl::string_view help);

// A sample value or bucket bound: the shortest text that parses back to the
// same double ("0.25", "1e-07"), whole numbers below 1e15 in plain digits
// ("400000"); "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

}  // namespace fcvm::metrics
