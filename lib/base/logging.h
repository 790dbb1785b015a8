#pragma once

// Logging setup. fcvm logs through spdlog's default logger; call InitLogging
// once from main. Under systemd (JOURNAL_STREAM names our stderr) records go
// to the journal with their priority; elsewhere to stderr with timestamps.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fcvm {

// `level`: trace, debug, info, warn, error or off. InvalidArgument otherwise.
absl::Status InitLogging(absl::string_view level, absl::string_view program);

// True when stderr is connected to the systemd journal.
bool StderrIsJournal();

}  // namespace fcvm
