#pragma once

// fcvmctl: a thin gRPC client of fcvmd. RunCli is the whole program minus
// main(), so tests can drive it with in-memory streams.

#include <ostream>
#include <string>
#include <vector>

namespace fcvm::cli {

// `args` excludes the program name. Returns the process exit code: 0 success,
// 1 the daemon or the operation failed, 2 bad usage.
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace fcvm::cli
