#pragma once

// Runs a command to completion for tests, keeping stdout and stderr apart.

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace fcvm::testing {

struct CommandResult {
  int code = -1;  // exit code; -1 when it could not run or was killed
  std::string out;
  std::string err;  // or why it could not run
};

// `stdin_path`: a file to feed on standard input (default /dev/null).
CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout = absl::Seconds(120),
                         const std::string& stdin_path = "");

}  // namespace fcvm::testing
