#include "tests/e2e/e2e_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"

#ifndef FCVM_TEST_GUEST_PATH
#define FCVM_TEST_GUEST_PATH ""
#endif

namespace fcvm::e2e {

std::string FirecrackerPath() {
  const char* p = std::getenv("FCVM_FIRECRACKER_BIN");
  return p == nullptr ? "" : p;
}

std::string GuestPath() {
  const char* p = std::getenv("FCVM_TEST_GUEST");
  return p != nullptr ? p : FCVM_TEST_GUEST_PATH;
}

std::string MissingPrerequisite() {
  std::string fc = FirecrackerPath();
  if (fc.empty()) return "FCVM_FIRECRACKER_BIN is not set (path of a Firecracker >= 1.12 binary)";
  if (access(fc.c_str(), X_OK) != 0) return absl::StrCat("FCVM_FIRECRACKER_BIN=", fc, " is not executable");
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return absl::StrCat("/dev/kvm: ", strerror(errno));
  close(kvm);
  std::string guest = GuestPath();
  if (guest.empty()) return "the test guest was not built (no x86_64 GNU as/ld)";
  if (access(guest.c_str(), R_OK) != 0)
    return absl::StrCat("test guest ", guest, " is missing (build fcvm-test-guest)");
  return "";
}

std::string JailerPath() {
  const char* p = std::getenv("FCVM_JAILER_BIN");
  if (p != nullptr) return p;
  std::string fc = FirecrackerPath();
  size_t slash = fc.rfind('/');
  return slash == std::string::npos ? std::string() : fc.substr(0, slash + 1) + "jailer";
}

std::string MissingJailPrerequisite() {
  std::string missing = MissingPrerequisite();
  if (!missing.empty()) return missing;
  std::string jailer = JailerPath();
  if (jailer.empty() || access(jailer.c_str(), X_OK) != 0) {
    return absl::StrCat("no jailer: set FCVM_JAILER_BIN (or put \"jailer\" beside the Firecracker binary)",
                        jailer.empty() ? "" : absl::StrCat("; ", jailer, " is not executable"));
  }
  if (geteuid() != 0) return "the jailed tests need root (chroot, cgroups, uids)";
  return "";
}

std::vector<std::string> FcvmdJailArgs() {
  std::string missing = MissingJailPrerequisite();
  if (missing.empty()) return {"--jailer", JailerPath()};
  static std::once_flag once;
  std::call_once(once, [&] {
    std::fprintf(stderr, "fcvmd runs with --no-jailer in these tests: %s\n", missing.c_str());
  });
  return {"--no-jailer"};
}

absl::StatusOr<Process> StartFcvmd(const std::string& binary, const std::string& dir,
                                   const std::vector<std::string>& args) {
  const std::string socket = dir + "/fcvmd.sock", log_path = dir + "/fcvmd.log";
  UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log) return ErrnoError(absl::StrCat("open ", log_path));
  SpawnOptions so;
  so.argv = {binary, "--socket", socket, "--state-dir", dir + "/state", "--firecracker", FirecrackerPath()};
  for (std::string& a : FcvmdJailArgs()) so.argv.push_back(std::move(a));
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.fds = {{log.get(), 2}};
  ASSIGN_OR_RETURN(Process daemon, Process::Spawn(so));
  log.Reset();
  for (absl::Time deadline = absl::Now() + absl::Seconds(30); !ConnectUnix(socket).ok();) {
    ASSIGN_OR_RETURN(std::optional<ExitStatus> exited, daemon.TryWait());
    if (exited.has_value()) {
      return absl::UnavailableError(absl::StrCat("fcvmd exited at start (", exited->ToString(),
                                                 "); its log:\n", ReadFile(log_path).value_or("")));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("fcvmd did not serve within 30 s; its log:\n", ReadFile(log_path).value_or("")));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return daemon;
}

firecracker::BootSpec GuestBootSpec(const std::string& guest) {
  return {.boot_source = {.kernel_image_path = guest, .boot_args = kGuestBootArgs},
          .machine = {.vcpu_count = 1, .mem_size_mib = kGuestMemMib}};
}

namespace {

bool ParseTick(absl::string_view line, Tick* tick) {
  constexpr absl::string_view kPrefix = "FCVM-GUEST TICK ";
  if (!absl::StartsWith(line, kPrefix)) return false;
  std::vector<absl::string_view> words = absl::StrSplit(line.substr(kPrefix.size()), ' ');
  if (words.size() < 2 || !absl::SimpleAtoi(words[0], &tick->number)) return false;
  if (words[1] != "OK" && words[1] != "BAD") return false;
  tick->ok = words[1] == "OK";
  tick->line = std::string(line);
  return true;
}

}  // namespace

absl::StatusOr<uint64_t> WaitForReady(const firecracker::ConsoleCapture& console, uint64_t from_line,
                                      absl::Duration timeout) {
  uint64_t n = 0;
  absl::StatusOr<std::string> line = console.WaitForLine(
      [](absl::string_view l) {
        return absl::StartsWith(l, "FCVM-GUEST READY") || absl::StartsWith(l, "FCVM-GUEST ERROR") ||
               absl::StartsWith(l, "FCVM-GUEST FAULT");
      },
      from_line, absl::Now() + timeout, &n);
  if (!line.ok()) return Annotate(line.status(), "waiting for FCVM-GUEST READY");
  if (!absl::StartsWith(*line, "FCVM-GUEST READY"))
    return absl::InternalError(absl::StrCat("guest: ", *line));
  return n;
}

absl::StatusOr<Tick> WaitForOkTicks(const firecracker::ConsoleCapture& console, uint64_t from_line, int count,
                                    uint64_t after_tick, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  Tick last;
  last.number = after_tick;
  uint64_t next_line = from_line;
  for (int i = 0; i < count; ++i) {
    uint64_t n = 0;
    Tick tick;
    absl::StatusOr<std::string> line = console.WaitForLine(
        [&](absl::string_view l) {
          return ParseTick(l, &tick) || absl::StartsWith(l, "FCVM-GUEST FAULT") ||
                 absl::StartsWith(l, "FCVM-GUEST ERROR");
        },
        next_line, deadline, &n);
    if (!line.ok()) {
      return Annotate(line.status(), absl::StrCat("waiting for OK tick ", i + 1, " of ", count,
                                                  " after tick ", last.number));
    }
    next_line = n + 1;
    if (!ParseTick(*line, &tick)) return absl::InternalError(absl::StrCat("guest: ", *line));
    if (!tick.ok) return absl::DataLossError(absl::StrCat("guest: ", tick.line));
    if (tick.number <= last.number) {
      return absl::InternalError(absl::StrCat("tick numbers went from ", last.number, " to ", tick.number));
    }
    last = tick;
  }
  return last;
}

uint64_t LastTick(const firecracker::ConsoleCapture& console) {
  uint64_t last = 0;
  for (const std::string& l : console.LastLines(1000)) {
    Tick t;
    if (ParseTick(l, &t)) last = t.number;
  }
  return last;
}

// ---------------------------------------------------------------- Uffd

absl::StatusOr<std::unique_ptr<UffdTestServer>> UffdTestServer::Start(std::string socket_path,
                                                                      std::string mem_file, Options options) {
  std::unique_ptr<UffdTestServer> s(new UffdTestServer());
  s->socket_path_ = std::move(socket_path);
  s->mem_file_ = std::move(mem_file);
  s->options_ = std::move(options);
  ASSIGN_OR_RETURN(s->listen_, ListenUnix(s->socket_path_, {.backlog = 1}));
  s->stop_.Reset(eventfd(0, EFD_CLOEXEC));
  if (!s->stop_) return ErrnoError("eventfd");
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

UffdTestServer::~UffdTestServer() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    if (write(stop_.get(), &one, sizeof(one)) < 0) abort();
    thread_.join();
  }
  unlink(socket_path_.c_str());
}

absl::Status UffdTestServer::error() const {
  if (!failed_.load(std::memory_order_acquire)) return absl::OkStatus();
  return absl::InternalError(error_message_);
}

void UffdTestServer::Run() {
  absl::Status st = Serve();
  if (!st.ok()) {
    error_message_ = std::string(st.message());
    failed_.store(true, std::memory_order_release);
  }
}

namespace {

struct Region {
  uint64_t base = 0, size = 0, offset = 0, page_size = 4096;
};

// False when the stop eventfd fired.
absl::StatusOr<bool> WaitFor(int fd, int stop_fd) {
  struct pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
  while (poll(p, 2, -1) < 0) {
    if (errno != EINTR) return ErrnoError("poll");
  }
  return (p[1].revents & POLLIN) == 0;
}

}  // namespace

absl::Status UffdTestServer::Serve() {
  ASSIGN_OR_RETURN(bool go, WaitFor(listen_.get(), stop_.get()));
  if (!go) return absl::OkStatus();
  UniqueFd conn(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return ErrnoError("accept");

  // 1. The handshake: one message, a JSON array of regions, one fd (the uffd).
  std::string buf(64 * 1024, '\0');
  ASSIGN_OR_RETURN(bool ready, WaitFor(conn.get(), stop_.get()));
  if (!ready) return absl::OkStatus();
  ASSIGN_OR_RETURN(ReceivedMessage msg, RecvWithFds(conn.get(), absl::MakeSpan(buf), 4));
  if (msg.bytes == 0) return absl::UnavailableError("firecracker hung up before the handshake");
  if (msg.control_truncated || msg.fds.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("handshake carried ", msg.fds.size(), " fds"));
  }
  UniqueFd uffd = std::move(msg.fds[0]);
  nlohmann::json j = nlohmann::json::parse(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(msg.bytes),
                                           nullptr, false);
  if (j.is_discarded() || !j.is_array() || j.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("bad handshake: ", buf.substr(0, msg.bytes)));
  }
  std::vector<Region> regions;
  uint64_t end_offset = 0;
  for (const auto& r : j) {
    Region reg;
    if (!r.is_object() || !r.contains("base_host_virt_addr") || !r.contains("size") ||
        !r.contains("offset")) {
      return absl::InvalidArgumentError(absl::StrCat("bad handshake region: ", r.dump()));
    }
    reg.base = r["base_host_virt_addr"].get<uint64_t>();
    reg.size = r["size"].get<uint64_t>();
    reg.offset = r["offset"].get<uint64_t>();
    reg.page_size =
        r.contains("page_size") ? r["page_size"].get<uint64_t>() : r.value("page_size_kib", 4096ull);
    end_offset = std::max(end_offset, reg.offset + reg.size);
    regions.push_back(reg);
  }

  UniqueFd mem(open(mem_file_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!mem) return ErrnoError(absl::StrCat("open ", mem_file_));
  struct stat st;
  if (fstat(mem.get(), &st) < 0) return ErrnoError("fstat");
  if (static_cast<uint64_t>(st.st_size) < end_offset) {
    return absl::InvalidArgumentError(absl::StrCat("memory file ", mem_file_, " has ", st.st_size,
                                                   " bytes, the regions need ", end_offset));
  }
  void* map = mmap(nullptr, end_offset, PROT_READ, MAP_PRIVATE, mem.get(), 0);
  if (map == MAP_FAILED) return ErrnoError("mmap memory file");
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { munmap(p, n); }
  } unmap{map, end_offset};
  const char* src = static_cast<const char*>(map);
  handshake_.store(true);
  if (options_.on_handshake) options_.on_handshake();

  // 2. Serve faults until Firecracker hangs up (its end of the socket closes
  // when it exits) or we are stopped.
  std::map<uint64_t, uint64_t> removed;  // start -> end of ranges the guest gave back
  std::vector<uint64_t> pending;         // fault addresses not resolved yet
  while (true) {
    struct pollfd p[3] = {{uffd.get(), POLLIN, 0}, {conn.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    int timeout = pending.empty() ? -1 : 1;  // EAGAIN'd faults: retry soon
    if (poll(p, 3, timeout) < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll");
    }
    if (p[2].revents & POLLIN) return absl::OkStatus();
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      char c;
      if (recv(conn.get(), &c, 1, MSG_DONTWAIT) <= 0) return absl::OkStatus();  // Firecracker is gone
    }
    if (!options_.serve) continue;
    // Drain every queued event before resolving: while a REMOVE is queued,
    // UFFDIO ioctls fail with EAGAIN.
    while (true) {
      uffd_msg msgs[32];
      ssize_t n = read(uffd.get(), msgs, sizeof(msgs));
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        return ErrnoError("read uffd");
      }
      for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(uffd_msg); ++i) {
        if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
          pending.push_back(msgs[i].arg.pagefault.address);
        } else if (msgs[i].event == UFFD_EVENT_REMOVE) {
          removed[msgs[i].arg.remove.start] = msgs[i].arg.remove.end;
        }
      }
      if (static_cast<size_t>(n) < sizeof(msgs)) break;
    }
    std::vector<uint64_t> retry;
    for (uint64_t addr : pending) {
      const Region* reg = nullptr;
      for (const Region& r : regions) {
        if (addr >= r.base && addr < r.base + r.size) reg = &r;
      }
      if (reg == nullptr)
        return absl::InternalError(absl::StrCat("fault outside guest memory: 0x", absl::Hex(addr)));
      uint64_t page = addr & ~(reg->page_size - 1);
      bool zero = false;
      auto it = removed.upper_bound(page);
      if (it != removed.begin() && std::prev(it)->second > page) zero = true;
      int r;
      if (zero) {
        uffdio_zeropage z{};
        z.range = {page, reg->page_size};
        r = ioctl(uffd.get(), UFFDIO_ZEROPAGE, &z);
      } else {
        uffdio_copy c{};
        c.dst = page;
        c.src = reinterpret_cast<uint64_t>(src + reg->offset + (page - reg->base));
        c.len = reg->page_size;
        r = ioctl(uffd.get(), UFFDIO_COPY, &c);
      }
      if (r == 0) {
        faults_.fetch_add(1);
        if (zero) {
          // Populated again: later faults here are ordinary misses.
          auto range = std::prev(removed.upper_bound(page));
          uint64_t start = range->first, end = range->second;
          removed.erase(range);
          if (start < page) removed[start] = page;
          if (page + reg->page_size < end) removed[page + reg->page_size] = end;
        }
      } else if (errno == EEXIST) {
        uffdio_range w{page, reg->page_size};  // already there: wake the waiter
        ioctl(uffd.get(), UFFDIO_WAKE, &w);
      } else if (errno == EAGAIN) {
        retry.push_back(addr);
      } else {
        return ErrnoError(absl::StrCat(zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", " [0x", absl::Hex(page), "+",
                                       reg->page_size, "]"));
      }
    }
    pending = std::move(retry);
  }
}

// ------------------------------------------------------------ Leftovers

bool IsJailedUnder(pid_t pid, const std::string& dir) {
  struct stat root;
  if (stat(absl::StrCat("/proc/", pid, "/root").c_str(), &root) != 0) return false;
  // /proc/<pid>/root reads "/" inside the jail's own mount namespace: compare
  // the directory itself with every chroot under `dir`.
  for (const std::string& pattern : {dir + "/jail/firecracker/*/root", dir + "/*/jail/firecracker/*/root"}) {
    glob_t g;
    if (glob(pattern.c_str(), GLOB_NOSORT, nullptr, &g) != 0) continue;
    bool match = false;
    for (size_t i = 0; i < g.gl_pathc && !match; ++i) {
      struct stat chroot;
      match =
          stat(g.gl_pathv[i], &chroot) == 0 && chroot.st_dev == root.st_dev && chroot.st_ino == root.st_ino;
    }
    globfree(&g);
    if (match) return true;
  }
  return false;
}

std::vector<std::string> Leftovers(const std::string& dir, const std::string& netns_prefix) {
  std::vector<std::string> out;
  pid_t self = getpid();
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      int pid;
      if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
      std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      size_t close = stat.rfind(')');
      if (close == std::string::npos) continue;
      std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ');
      int ppid;
      if (f.size() > 1 && absl::SimpleAtoi(f[1], &ppid) && ppid == self) {
        out.push_back(absl::StrCat("child process ", pid, " ", stat.substr(0, close + 1), " state ", f[0]));
        continue;
      }
      // Any other process running from `dir` (a Firecracker whose fcvmd is
      // gone is nobody's child).
      if (!dir.empty() && pid != self && f.size() > 0 && f[0] != "Z") {
        std::ifstream cl(absl::StrCat("/proc/", pid, "/cmdline"));
        std::string cmdline((std::istreambuf_iterator<char>(cl)), std::istreambuf_iterator<char>());
        if (absl::StrContains(cmdline, dir + "/")) {
          out.push_back(absl::StrCat("process ", pid, " ", stat.substr(0, close + 1), " runs from ", dir));
        } else if (IsJailedUnder(pid, dir)) {
          // A jailed Firecracker: its command line has jail paths only.
          out.push_back(
              absl::StrCat("process ", pid, " ", stat.substr(0, close + 1), " is chrooted in ", dir));
        }
      }
    }
    closedir(d);
  }
  if (!dir.empty()) {
    std::string cmd = absl::StrCat("find '", dir, "' -type s 2>/dev/null");
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char line[4096];
      while (fgets(line, sizeof(line), p)) out.push_back(absl::StrCat("socket ", line));
      pclose(p);
    }
    std::ifstream mi("/proc/self/mountinfo");
    std::string line;
    while (std::getline(mi, line)) {
      if (absl::StrContains(line, dir)) out.push_back(absl::StrCat("mount ", line));
    }
  }
  if (!netns_prefix.empty()) {
    if (DIR* d = opendir("/run/netns")) {
      while (dirent* e = readdir(d)) {
        if (absl::StartsWith(e->d_name, netns_prefix)) out.push_back(absl::StrCat("netns ", e->d_name));
      }
      closedir(d);
    }
  }
  return out;
}

double MedianMs(std::vector<absl::Duration> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  absl::Duration m = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return absl::ToDoubleMilliseconds(m);
}

// ------------------------------------------------------------ processes

std::map<std::string, std::string> ReadStatus(const std::string& path) {
  std::map<std::string, std::string> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    out[line.substr(0, colon)] = value;
  }
  return out;
}

std::string ReadLink(const std::string& path) {
  char buf[4096];
  ssize_t n = readlink(path.c_str(), buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Every path below `dir`, relative ("dev/kvm"), without following links.
void ListTree(const std::string& dir, const std::string& rel, std::set<std::string>* out) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string r = rel.empty() ? name : absl::StrCat(rel, "/", name);
    out->insert(r);
    if (e->d_type == DT_DIR) ListTree(absl::StrCat(dir, "/", name), r, out);
  }
  closedir(d);
}

// What a process running as uid:gid gets when it opens `file` for reading
// and connects to `socket`: the two errnos (0 = success). Forked child doing
// only system calls, so it is safe in this multi-threaded program.
std::pair<int, int> TryAs(uint32_t uid, uint32_t gid, const std::string& file, const std::string& socket) {
  int p[2];
  if (pipe(p) < 0) return {-1, -1};
  pid_t pid = fork();
  if (pid == 0) {
    int result[2] = {-1, -1};
    if (setgroups(0, nullptr) == 0 && setresgid(gid, gid, gid) == 0 && setresuid(uid, uid, uid) == 0) {
      int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
      result[0] = fd >= 0 ? 0 : errno;
      int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket.c_str());
      result[1] = connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ? 0 : errno;
    }
    if (write(p[1], result, sizeof(result)) < 0) _exit(2);
    _exit(0);
  }
  close(p[1]);
  int result[2] = {-1, -1};
  if (read(p[0], result, sizeof(result)) != sizeof(result)) result[0] = result[1] = -1;
  close(p[0]);
  waitpid(pid, nullptr, 0);
  return {result[0], result[1]};
}

}  // namespace fcvm::e2e
