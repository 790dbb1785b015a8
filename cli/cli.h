#pragma once

// fcvmctl: a thin gRPC client of fcvmd. RunCli is the whole program minus
// main(), so tests can drive it with in-memory streams. Request building lives
// in cli/requests.h and output formatting in cli/format.h.

#include <ostream>
#include <string>
#include <vector>

namespace fcvm::cli {

// `args` excludes the program name. Returns the process exit code: 0 success,
// 1 the daemon or the operation failed, 2 bad usage. Progress of long calls is
// written to `err` only when `stderr_is_tty` or --progress is given; it never
// goes to `out`. `top` clears the screen between frames only when
// `stdout_is_tty`.
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
           bool stderr_is_tty = false, bool stdout_is_tty = false);

}  // namespace fcvm::cli
