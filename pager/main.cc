// fcvm-pager: main() is signal set-up around fcvm::pager::Run.

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "pager/pager.h"

int main(int argc, char** argv) {
  bool help = false;
  std::string help_text;
  absl::StatusOr<fcvm::pager::PagerConfig> config =
      fcvm::pager::ParseArgs(std::vector<std::string>(argv + 1, argv + argc), &help, &help_text);
  if (!config.ok()) {
    std::cerr << "fcvm-pager: " << config.status().message() << "\n";
    return 2;
  }
  if (help) {
    std::cout << help_text;
    return 0;
  }
  // SIGTERM/SIGINT are blocked in every thread and read through a signalfd.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &stop, SFD_CLOEXEC);
  if (sfd < 0) {
    std::cerr << "fcvm-pager: signalfd failed\n";
    return 1;
  }
  int code = fcvm::pager::Run(*config, sfd, std::cout);
  close(sfd);
  return code;
}
