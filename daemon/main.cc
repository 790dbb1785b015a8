// fcvmd: the fcvm host daemon. Thin glue: flags, logging, signals, systemd
// notification; the daemon itself is daemon/daemon.h.

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon/daemon.h"
#include "lib/base/flags.h"
#include "lib/base/logging.h"
#include "spdlog/spdlog.h"
#include "systemd/sd-daemon.h"

int main(int argc, char** argv) {
  fcvm::daemon::DaemonOptions options;
  if (const char* env = std::getenv("FCVM_SOCKET")) options.socket_path = env;
  if (const char* env = std::getenv("FCVM_FIRECRACKER_BIN")) options.firecracker_bin = env;
  std::string log_level = "info";
  fcvm::FlagParser flags(
      "fcvmd [options]\n\nThe fcvm host daemon: boots, snapshots and clones Firecracker microVMs, "
      "serving a gRPC API on a Unix socket.");
  flags.String("socket", &options.socket_path,
               "gRPC Unix socket (env FCVM_SOCKET; default /run/fcvm/fcvmd.sock)", "PATH");
  flags.String("state-dir", &options.state_dir, "state directory (default /var/lib/fcvm)", "DIR");
  flags.String("firecracker", &options.firecracker_bin, "Firecracker binary (env FCVM_FIRECRACKER_BIN)",
               "PATH");
  flags.String("jailer", &options.jailer_bin, "jailer binary (optional)", "PATH");
  flags.String("log-level", &log_level, "trace, debug, info, warn, error or off", "LEVEL");
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<std::vector<std::string>> rest = flags.Parse(args);
  if (!rest.ok()) {
    std::fprintf(stderr, "fcvmd: %s\n", std::string(rest.status().message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!rest->empty()) {
    std::fprintf(stderr, "fcvmd: unexpected argument '%s' (see --help)\n", (*rest)[0].c_str());
    return 2;
  }
  if (absl::Status st = fcvm::InitLogging(log_level, "fcvmd"); !st.ok()) {
    std::fprintf(stderr, "fcvmd: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  // Block the stop signals before any thread starts so that every thread
  // inherits the mask and only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<fcvm::daemon::Daemon>> daemon = fcvm::daemon::Daemon::Start(options);
  if (!daemon.ok()) {
    spdlog::error("cannot start: {}", daemon.status().message());
    return 1;
  }
  sd_notify(0, "READY=1\nSTATUS=serving");

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  sd_notify(0, "STOPPING=1");
  (*daemon)->Shutdown();
  return 0;
}
