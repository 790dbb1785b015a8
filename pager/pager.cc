#include "pager/pager.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/flags.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "spdlog/spdlog.h"

namespace fcvm::pager {
namespace {

constexpr char kUsage[] =
    "fcvm-pager SOCKET MEMFILE [options]\n"
    "       fcvm-pager --snapshot NAME=MEMFILE --socket NAME=PATH [...] [options]\n\n"
    "Serves the guest memory of every Firecracker that connects to SOCKET (its\n"
    "/snapshot/load mem_backend {\"backend_type\": \"Uffd\", \"backend_path\": SOCKET}),\n"
    "from MEMFILE, any number at once, until SIGTERM/SIGINT.";

absl::Status SplitPair(absl::string_view flag, const std::string& value, std::string* key,
                       std::string* rest) {
  size_t eq = value.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == value.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " wants NAME=VALUE, got '", value, "'"));
  }
  *key = value.substr(0, eq);
  *rest = value.substr(eq + 1);
  return absl::OkStatus();
}

std::string Summary(const uffd::PageStats& s) {
  return absl::StrFormat(
      "faults=%d copied=%d zero=%d prefetched=%d bytes=%d eagain=%d eexist=%d p50=%.1fus p99=%.1fus",
      s.faults, s.pages_copied, s.zero_pages, s.prefetched_pages, s.bytes_copied, s.eagain, s.eexist,
      s.p50_us(), s.p99_us());
}

}  // namespace

absl::StatusOr<PagerConfig> ParseArgs(const std::vector<std::string>& args, bool* help,
                                      std::string* help_text) {
  PagerConfig c;
  std::vector<std::string> snapshot_args, socket_args;
  int64_t fault_around = static_cast<int64_t>(c.fault_around_bytes);
  int64_t threads = 0;
  bool no_zero = false;
  std::string policy = "none", on_bad_peer = "kill";
  FlagParser flags(kUsage);
  flags.Int("fault-around", &fault_around,
            "bytes installed around each fault, power of two; 0 = off (default 65536)", "BYTES");
  flags.Bool("no-zero-elision", &no_zero, "copy all-zero pages instead of mapping the zero page");
  flags.String("policy", &policy, "working set: none, record, prefetch or auto (default none)", "POLICY");
  flags.String("working-set", &c.working_set, "working-set file (default MEMFILE.wset)", "PATH");
  flags.Int("threads", &threads, "io_uring loop threads (default: one per core)");
  flags.Duration("handshake-timeout", &c.handshake_timeout,
                 "time a peer has to send its handshake (default 5s)");
  flags.String("on-bad-peer", &on_bad_peer,
               "kill (default: a Firecracker without its pager would freeze) or drop the connection",
               "kill|drop");
  flags.String("log-level", &c.log_level, "trace, debug, info, warn, error, off", "LEVEL");
  flags.Duration("stats-interval", &c.stats_interval, "print per-connection statistics this often");
  flags.Bool("once", &c.once, "serve one connection, exit when it hangs up");
  flags.List("snapshot", &snapshot_args, "a memory file to serve (repeatable)", "NAME=MEMFILE");
  flags.List("socket", &socket_args, "the socket for snapshot NAME (repeatable)", "NAME=PATH");
  ASSIGN_OR_RETURN(std::vector<std::string> positional, flags.Parse(args));
  *help = flags.help_requested();
  *help_text = flags.Help();
  if (*help) return c;

  if (!positional.empty()) {
    if (positional.size() != 2) {
      return absl::InvalidArgumentError("want SOCKET MEMFILE (or --snapshot/--socket pairs); see --help");
    }
    c.snapshots.push_back({"default", positional[1], positional[0]});
  }
  std::map<std::string, std::string> sockets;
  for (const std::string& s : socket_args) {
    std::string name, path;
    RETURN_IF_ERROR(SplitPair("socket", s, &name, &path));
    if (!sockets.emplace(name, path).second) {
      return absl::InvalidArgumentError(absl::StrCat("--socket ", name, " given twice"));
    }
  }
  std::set<std::string> names;
  for (const std::string& s : snapshot_args) {
    std::string name, mem;
    RETURN_IF_ERROR(SplitPair("snapshot", s, &name, &mem));
    if (!names.insert(name).second)
      return absl::InvalidArgumentError(absl::StrCat("--snapshot ", name, " given twice"));
    auto it = sockets.find(name);
    if (it == sockets.end())
      return absl::InvalidArgumentError(
          absl::StrCat("--snapshot ", name, " has no --socket ", name, "=PATH"));
    c.snapshots.push_back({name, mem, it->second});
    sockets.erase(it);
  }
  if (!sockets.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--socket ", sockets.begin()->first, " names no --snapshot"));
  }
  if (c.snapshots.empty())
    return absl::InvalidArgumentError("nothing to serve: give SOCKET MEMFILE; see --help");
  if (!c.working_set.empty() && c.snapshots.size() > 1) {
    return absl::InvalidArgumentError("--working-set applies to a single snapshot");
  }
  if (c.once && c.snapshots.size() > 1) return absl::InvalidArgumentError("--once serves a single snapshot");

  if (fault_around < 0 || (fault_around != 0 && (fault_around & (fault_around - 1)) != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fault-around must be 0 or a power of two, got ", fault_around));
  }
  c.fault_around_bytes = static_cast<uint64_t>(fault_around);
  c.zero_elision = !no_zero;
  if (threads < 0 || threads > 256) return absl::InvalidArgumentError("--threads must be 0-256");
  c.threads = static_cast<int>(threads);
  if (policy == "none") {
    c.policy = uffd::ClonePolicy::kNone;
  } else if (policy == "record") {
    c.policy = uffd::ClonePolicy::kRecord;
  } else if (policy == "prefetch") {
    c.policy = uffd::ClonePolicy::kPrefetch;
  } else if (policy == "auto") {
    c.policy = uffd::ClonePolicy::kAuto;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--policy must be none, record, prefetch or auto, got '", policy, "'"));
  }
  if (on_bad_peer == "kill") {
    c.on_bad_peer = uffd::FailurePolicy::kKill;
  } else if (on_bad_peer == "drop") {
    c.on_bad_peer = uffd::FailurePolicy::kDrop;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--on-bad-peer must be kill or drop, got '", on_bad_peer, "'"));
  }
  if (c.handshake_timeout <= absl::ZeroDuration())
    return absl::InvalidArgumentError("--handshake-timeout must be > 0");
  return c;
}

int Run(const PagerConfig& config, int stop_fd, std::ostream& out) {
  if (absl::Status st = InitLogging(config.log_level, "fcvm-pager"); !st.ok()) {
    out << "fcvm-pager: " << st.message() << "\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<uffd::PageServer>> server =
      uffd::PageServer::Create({.threads = config.threads});
  if (!server.ok()) {
    out << "fcvm-pager: cannot start: " << server.status().message() << "\n";
    return 1;
  }
  // Events arrive on loop threads; they are queued and printed here.
  absl::Mutex mu;
  std::deque<uffd::SessionEvent> events;
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  (*server)->SetEventCallback([&](const uffd::SessionEvent& ev) {
    {
      absl::MutexLock lock(&mu);
      events.push_back(ev);
    }
    uint64_t one = 1;
    if (write(wake.get(), &one, sizeof(one)) < 0) {
      // The counter cannot overflow in practice; nothing to do.
    }
  });

  std::map<uffd::ListenerId, std::string> names;
  for (const SnapshotArg& s : config.snapshots) {
    uffd::ListenerSpec spec;
    spec.socket_path = s.socket;
    spec.files.mem_file_path = s.mem_file;
    spec.files.working_set_path = config.working_set;
    spec.policy = config.policy;
    spec.fault_around_bytes = config.fault_around_bytes;
    spec.zero_elision = config.zero_elision;
    spec.max_connections = config.once ? 1 : 0;
    spec.on_failure = config.on_bad_peer;
    spec.handshake_timeout = config.handshake_timeout;
    spec.tag = s.name;
    absl::StatusOr<uffd::ListenerId> id = (*server)->AddListener(spec);
    if (!id.ok()) {
      out << "fcvm-pager: " << s.name << ": " << id.status().message() << "\n";
      (*server)->Stop();
      return 1;
    }
    names[*id] = s.name;
    out << "fcvm-pager: serving " << s.mem_file << " on " << s.socket << " (" << s.name << ", policy "
        << uffd::ClonePolicyName(config.policy) << ", fault-around " << config.fault_around_bytes
        << ", zero elision " << (config.zero_elision ? "on" : "off") << ")" << std::endl;
  }

  int exit_code = 0;
  bool done = false;
  uint64_t connections = 0, refused = 0, failed = 0;
  absl::Time next_stats = absl::Now() + config.stats_interval;
  while (!done) {
    int timeout_ms = -1;
    if (config.stats_interval > absl::ZeroDuration()) {
      timeout_ms = std::max<int>(0, static_cast<int>(absl::ToInt64Milliseconds(next_stats - absl::Now())));
    }
    struct pollfd fds[2] = {{stop_fd, POLLIN, 0}, {wake.get(), POLLIN, 0}};
    int r = poll(fds, 2, timeout_ms);
    if (r < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) {
      out << "fcvm-pager: stopping" << std::endl;
      break;
    }
    uint64_t count;
    if (read(wake.get(), &count, sizeof(count)) < 0) {
      // Nothing queued (EAGAIN).
    }
    std::deque<uffd::SessionEvent> batch;
    {
      absl::MutexLock lock(&mu);
      batch.swap(events);
    }
    for (const uffd::SessionEvent& ev : batch) {
      std::string prefix = absl::StrCat("[", ev.tag, "] connection ", ev.session);
      switch (ev.kind) {
        case uffd::SessionEventKind::kReady:
          ++connections;
          out << prefix << ": peer pid " << ev.peer_pid << ", " << ev.regions << " region(s) of "
              << (ev.page_size >> 10) << " KiB pages, policy " << uffd::ClonePolicyName(ev.policy)
              << std::endl;
          break;
        case uffd::SessionEventKind::kRejected:
          ++refused;
          out << prefix << " refused: " << ev.status.message() << (ev.peer_killed ? " (peer killed)" : "")
              << std::endl;
          if (config.once) done = true, exit_code = 1;
          break;
        case uffd::SessionEventKind::kPrefetchDone:
          out << prefix << ": working set installed (" << ev.stats.prefetched_pages << " pages)" << std::endl;
          break;
        case uffd::SessionEventKind::kFailed:
          ++failed;
          out << prefix << " failed: " << ev.status.message() << (ev.peer_killed ? " (peer killed)" : "")
              << "; " << Summary(ev.stats) << std::endl;
          if (config.once) done = true, exit_code = 1;
          break;
        case uffd::SessionEventKind::kClosed:
          out << prefix << " closed: " << Summary(ev.stats) << std::endl;
          if (config.once) done = true;
          break;
      }
    }
    if (config.stats_interval > absl::ZeroDuration() && absl::Now() >= next_stats) {
      next_stats = absl::Now() + config.stats_interval;
      for (const uffd::ListenerStats& l : (*server)->GetStats().listeners) {
        for (const uffd::SessionStats& s : l.sessions) {
          out << "[" << l.tag << "] connection " << s.id << " (pid " << s.peer_pid
              << "): " << Summary(s.stats) << std::endl;
        }
      }
    }
  }
  uffd::ServerStats total = (*server)->GetStats();
  for (const auto& [id, name] : names) (void)(*server)->RemoveListener(id);
  (*server)->Stop();
  out << "fcvm-pager: " << connections << " connection(s) served, " << refused << " refused, " << failed
      << " failed; " << Summary(total.total) << std::endl;
  return exit_code;
}

}  // namespace fcvm::pager
