// fcvmd: the fcvm host daemon. Thin glue: flags, logging, signals, systemd
// notification; the daemon itself is daemon/daemon.h.

#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "daemon/daemon.h"
#include "lib/base/flags.h"
#include "lib/base/logging.h"
#include "spdlog/spdlog.h"
#include "systemd/sd-daemon.h"

int main(int argc, char** argv) {
  fcvm::daemon::DaemonOptions options;
  if (const char* env = std::getenv("FCVM_SOCKET")) options.socket_path = env;
  fcvm::vm::ManagerOptions& m = options.manager;
  if (const char* env = std::getenv("FCVM_FIRECRACKER_BIN")) m.firecracker_bin = env;
  std::string log_level = "info";
  int64_t workers = options.workers;
  int64_t page_server_threads = m.page_server_threads;
  int64_t clone_parallelism = m.default_clone_parallelism;
  int64_t warm_pool = m.warm_pool_size;
  int64_t clone_threads = m.clone_threads;
  fcvm::FlagParser flags(
      "fcvmd [options]\n\nThe fcvm host daemon: boots, snapshots and clones Firecracker microVMs, "
      "serving a gRPC API on a Unix socket.");
  flags.String("socket", &options.socket_path,
               "gRPC Unix socket (env FCVM_SOCKET; default /run/fcvm/fcvmd.sock)", "PATH");
  flags.String("state-dir", &m.state_dir, "state directory (default /var/lib/fcvm)", "DIR");
  flags.String("firecracker", &m.firecracker_bin, "Firecracker binary (env FCVM_FIRECRACKER_BIN)", "PATH");
  flags.String(
      "jailer", &options.jailer_bin,
      "jailer binary every Firecracker runs under (default: \"jailer\" beside the Firecracker binary)",
      "PATH");
  flags.Bool("no-jailer", &options.no_jailer,
             "run Firecracker without the jailer, as root (development only; logs a warning)");
  std::string uid_range;
  flags.String("uid-range", &uid_range,
               "uids (= gids) leased to jailed VMs, one each (default 1879048192:65536)", "BASE:COUNT");
  flags.Int("workers", &workers, "threads running blocking VM operations (default 16)");
  flags.Int("page-server-threads", &page_server_threads,
            "page server loop threads (default 0 = one per core)");
  flags.Int("clone-parallelism", &clone_parallelism,
            "clones restored at once per CloneSnapshot request unless it says (default 4)");
  flags.Int("clone-threads", &clone_threads, "clones restored at once across all requests (default 32)");
  flags.Int("warm-pool", &warm_pool,
            "pre-started Firecracker processes kept ready for clones (default 2; 0 = off)");
  flags.Bool("networking", &m.networking, "per-VM network namespaces (default on; --no-networking)");
  flags.String("network-pool", &m.network_pool,
               "unique VM addresses come from this IPv4 CIDR (default 10.200.0.0/16)", "CIDR");
  flags.String("network-uplink", &m.network_uplink, "host interface to MASQUERADE guest traffic through",
               "IFACE");
  flags.String("network-prefix", &m.network_prefix,
               "prefix of the namespaces, devices and nft tables fcvmd creates (default fcvm)", "PREFIX");
  std::string ksm = "off";
  int64_t ksm_pages = static_cast<int64_t>(options.ksm_pages_to_scan);
  int64_t ksm_sleep = static_cast<int64_t>(options.ksm_sleep_millisecs);
  flags.String("ksm", &ksm,
               "KSM memory merging: off (default); merge (every Firecracker started with its memory "
               "mergeable, ksmd left as the host has it); manage (merge, and run ksmd while fcvmd runs, "
               "putting its settings back on exit)",
               "off|merge|manage");
  flags.Int("ksm-pages-to-scan", &ksm_pages, "with --ksm=manage: ksmd's pages_to_scan (default 1000)");
  flags.Int("ksm-sleep-ms", &ksm_sleep, "with --ksm=manage: ksmd's sleep_millisecs (default 20)");
  flags.String("metrics-address", &options.metrics_address,
               "serve Prometheus metrics at GET /metrics on this loopback TCP address (127.0.0.1:9810) or "
               "Unix socket (unix:/run/fcvm/metrics.sock); default off",
               "ADDR");
  flags.Bool("metrics-allow-non-loopback", &options.metrics_allow_non_loopback,
             "accept a --metrics-address that is not loopback (no authentication, no TLS: firewall it)");
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
  // Range checks are Daemon::Start's; the casts only keep absurd values absurd.
  options.workers = static_cast<int>(std::clamp<int64_t>(workers, -1, 1 << 20));
  m.page_server_threads = static_cast<int>(std::clamp<int64_t>(page_server_threads, -1, 1 << 20));
  m.default_clone_parallelism = static_cast<uint32_t>(std::clamp<int64_t>(clone_parallelism, 0, 1 << 20));
  if (warm_pool < 0 || warm_pool > 256) {
    std::fprintf(stderr, "fcvmd: --warm-pool must be 0-256, got %lld\n", static_cast<long long>(warm_pool));
    return 2;
  }
  m.warm_pool_size = static_cast<uint32_t>(warm_pool);
  if (!uid_range.empty()) {
    std::vector<std::string> parts = absl::StrSplit(uid_range, ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &m.uid_base) ||
        !absl::SimpleAtoi(parts[1], &m.uid_count)) {
      std::fprintf(stderr, "fcvmd: --uid-range must be BASE:COUNT, got '%s'\n", uid_range.c_str());
      return 2;
    }
  }
  if (clone_threads < 1 || clone_threads > 1024) {
    std::fprintf(stderr, "fcvmd: --clone-threads must be 1-1024, got %lld\n",
                 static_cast<long long>(clone_threads));
    return 2;
  }
  m.clone_threads = static_cast<uint32_t>(clone_threads);
  if (ksm == "off") {
    options.ksm = fcvm::daemon::KsmMode::kOff;
  } else if (ksm == "merge") {
    options.ksm = fcvm::daemon::KsmMode::kMerge;
  } else if (ksm == "manage") {
    options.ksm = fcvm::daemon::KsmMode::kManage;
  } else {
    std::fprintf(stderr, "fcvmd: --ksm must be off, merge or manage, got '%s'\n", ksm.c_str());
    return 2;
  }
  options.ksm_pages_to_scan = static_cast<uint64_t>(std::clamp<int64_t>(ksm_pages, 0, 1 << 30));
  options.ksm_sleep_millisecs = static_cast<uint64_t>(std::clamp<int64_t>(ksm_sleep, 0, 1 << 30));
  if (absl::Status st = fcvm::InitLogging(log_level, "fcvmd"); !st.ok()) {
    std::fprintf(stderr, "fcvmd: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  // Files fcvmd creates are its own (and root's group's) unless it says
  // otherwise: set before any thread starts, since umask is per process.
  umask(027);

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
