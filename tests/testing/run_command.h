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

CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout = absl::Seconds(120));

}  // namespace fcvm::testing
