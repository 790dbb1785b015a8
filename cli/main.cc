// fcvmctl: command-line client of fcvmd. Thin glue around cli/cli.h.

#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.h"

int main(int argc, char** argv) {
  return fcvm::cli::RunCli(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr,
                           isatty(STDERR_FILENO) == 1, isatty(STDOUT_FILENO) == 1);
}
