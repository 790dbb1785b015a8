// fcvm-pager-bench: how fast the page server feeds many clones, against a
// thread-per-clone blocking handler and the File backend, in the same run.
//
// K clones, each a separate process (this binary re-executed with --clone),
// touch a W-byte working set of their guest memory in random page order (the
// set itself is made of short runs of pages, see WorkingSet()). Guest memory comes from
// one snapshot memory file (256 MiB per clone, 64 MiB when K = 64), about half
// of whose pages are zero.
//
// Modes:
//   tpc            baseline: one thread per clone, poll + read + one 4 KiB UFFDIO_COPY per fault
//   ondemand       page server, no fault-around, zero elision on
//   ondemand-nozero  page server, no fault-around, no zero elision (PSS reference)
//   faultaround    page server, 32 KiB fault-around (default; --fault-around-kib) + zero elision
//   prefetch       page server, prefetch-then-resume from a recorded working set
//   prefetch-cold  the same with the memory file dropped from the page cache first
//   prefetch-nozero  prefetch without zero elision (not in the default set)
//   file-warm      File backend: the clone maps the memory file MAP_PRIVATE, the whole file
//                  in the page cache, read back from disk
//   file-written   the same with the page cache as writing the file left it (larger folios:
//                  fewer faults), as right after Firecracker wrote the snapshot
//   file-cold      the same after posix_fadvise(DONTNEED) of the memory file
//   copy-floor     the kernel's floor for prefetch: the K working sets installed with the
//                  largest possible UFFDIO_COPY/ZEROPAGE calls by one thread per core, in this
//                  process (no server, no clone processes, no handshakes)
//
// Page sizes (--page-size=4k,2m): with 2m the clones' guest memory is hugetlbfs, mapped
// MAP_HUGETLB | MAP_NORESERVE as Firecracker maps it for "huge_pages": "2M", the handshake
// says 2 MiB, and every mode above except the File ones (Firecracker refuses a File
// restore of a hugetlbfs snapshot) runs with 2 MiB pages: a fault or a prefetched page is a
// whole 2 MiB page, so the same working set installs more memory (every huge page it
// touches). The bench adds the huge pages it needs to the host's pool for the run (root;
// nr_hugepages goes back to its value at the end) and prints "installed MiB/s" (guest
// memory made resident per second) next to the wall time, so 4 KiB and 2 MiB compare.
//
// Timing: every clone first maps its memory (and creates its uffd); the clock
// then starts, the server (or the thread-per-clone baseline) sets up each
// clone's socket, the clones connect and send their handshakes, the parent waits
// until the server has accepted every handshake (and, in prefetch modes, until
// every prefetch is done: prefetch-then-resume), releases the clones, and the
// clock stops when the last clone has touched its whole set. Fault latency is measured
// inside the clone around each first touch. RSS/PSS are summed over the clones
// (smaps_rollup) while all are still alive, after they finished.

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "lib/base/hugetlb.h"
#include "lib/base/logging.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"
#include "lib/base/unix_socket.h"
#include "lib/uffd/handshake.h"
#include "lib/uffd/page_server.h"
#include "lib/uffd/stats.h"

namespace fcvm::bench {
namespace {

constexpr uint64_t kPs = 4096;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Which pages of the memory file are zero (about half of them either way):
//   runs       runs of zero pages and runs of data pages alternate, each 1..64 pages long
//              (guest memory: free memory is zero in long stretches, used memory is data);
//   alternate  page by page from a hash whose bit flips almost every page: the worst case
//              for merging neighbours into one ioctl.
std::vector<bool> ZeroLayout(uint64_t pages, const std::string& layout) {
  std::vector<bool> zero(pages, false);
  if (layout == "alternate") {
    for (uint64_t p = 0; p < pages; ++p) zero[p] = ((p * 0x9E3779B97F4A7C15ull) >> 31 & 1) == 0;
    return zero;
  }
  std::mt19937_64 rng(777);
  bool z = false;
  for (uint64_t p = 0; p < pages;) {
    uint64_t len = 1 + rng() % 64;
    for (uint64_t i = 0; i < len && p < pages; ++i, ++p) zero[p] = z;
    z = !z;
  }
  return zero;
}

// The working set: page indices of the guest, the same for every clone. Runs
// of 1..32 pages (mean ~66 KiB) at pseudo-random page-aligned places, until
// W bytes: guest memory has locality, but not aligned to any block size, so
// too large a fault-around block installs pages nobody touches.
std::vector<uint64_t> WorkingSet(uint64_t guest_bytes, uint64_t ws_bytes) {
  const uint64_t guest_pages = guest_bytes / kPs;
  const uint64_t want = std::min(ws_bytes / kPs, guest_pages);
  std::vector<bool> chosen(guest_pages, false);
  std::vector<uint64_t> pages;
  std::mt19937_64 rng(12345);
  while (pages.size() < want) {
    uint64_t start = rng() % guest_pages;
    uint64_t len = 1 + rng() % 32;
    for (uint64_t p = start; p < start + len && p < guest_pages && pages.size() < want; ++p) {
      if (!chosen[p]) {
        chosen[p] = true;
        pages.push_back(p);
      }
    }
  }
  return pages;
}

// ------------------------------------------------------------------ clone

// argv: --clone MODE SOCKET_OR_FILE GUEST_BYTES WS_BYTES PAGE_SIZE; fd 3 = report pipe (write), fd 4 =
// go pipe (read).
int CloneMain(int argc, char** argv) {
  if (argc < 7) return 1;
  std::string mode = argv[2];
  std::string target = argv[3];
  uint64_t guest = std::stoull(argv[4]);
  uint64_t ws_bytes = std::stoull(argv[5]);
  uint64_t ps = std::stoull(argv[6]);
  const int report = 3, go = 4;
  uint8_t* mem = nullptr;
  if (mode == "file") {
    int fd = open(target.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 2;
    mem = static_cast<uint8_t*>(mmap(nullptr, guest, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0));
    close(fd);
    if (mem == MAP_FAILED) return 2;
    char c;
    if (write(report, "R", 1) != 1 || read(go, &c, 1) != 1) return 2;
  } else {
    const int huge = ps > kPs ? MAP_HUGETLB | (__builtin_ctzll(ps) << MAP_HUGE_SHIFT) : 0;
    mem = static_cast<uint8_t*>(mmap(nullptr, guest, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | huge, -1, 0));
    if (mem == MAP_FAILED) return 2;
    int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (uffd < 0) return 2;
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_EVENT_REMOVE;
    if (ioctl(uffd, UFFDIO_API, &api) < 0) return 2;
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(mem);
    reg.range.len = guest;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) return 2;
    // Connect only when told: the clock starts before the handshakes, so
    // handshake and prefetch are inside the measured time.
    char c;
    if (write(report, "R", 1) != 1 || read(go, &c, 1) != 1) return 2;
    auto sock = ConnectUnix(target);
    if (!sock.ok()) return 2;
    std::string json =
        absl::StrCat("[{\"base_host_virt_addr\":", reinterpret_cast<uint64_t>(mem), ",\"size\":", guest,
                     ",\"offset\":0,\"page_size\":", ps, ",\"page_size_kib\":", ps, "}]");
    int fds[1] = {uffd};
    if (!SendWithFds(sock->get(), json, fds).ok()) return 2;
    sock->Release();  // stays open until we exit, like Firecracker
  }
  std::vector<uint64_t> pages = WorkingSet(guest, ws_bytes);
  std::mt19937_64 rng(static_cast<uint64_t>(getpid()));
  std::shuffle(pages.begin(), pages.end(), rng);
  if (write(report, "H", 1) != 1) return 2;
  char c;
  if (read(go, &c, 1) != 1) return 2;
  uffd::LatencyHistogram hist;
  uint64_t t_start = NowNs();
  uint64_t sum = 0;
  for (uint64_t p : pages) {
    uint64_t t0 = NowNs();
    sum += *reinterpret_cast<volatile uint8_t*>(mem + p * kPs);
    hist.Add(NowNs() - t0);
  }
  uint64_t wall = NowNs() - t_start;
  std::string line = absl::StrFormat("D %d %d %d %d %d\n", pages.size(), hist.PercentileNs(0.5),
                                     hist.PercentileNs(0.99), wall, sum & 1);
  if (write(report, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return 2;
  // Stay mapped until the parent has measured RSS/PSS (it closes `go`).
  while (read(go, &c, 1) > 0) {
  }
  return 0;
}

// ------------------------------------------------------------------ baseline

// Thread-per-clone blocking handler: what a straightforward Uffd handler does.
class ThreadPerClone {
 public:
  ThreadPerClone(const uint8_t* file, uint64_t size) : file_(file), size_(size) {}
  ~ThreadPerClone() { Stop(); }
  absl::Status Add(const std::string& socket) {
    ListenOptions lo;
    auto fd = ListenUnix(socket, lo);
    if (!fd.ok()) return fd.status();
    int lfd = fd->Release();
    threads_.emplace_back([this, lfd, socket] { Serve(lfd, socket); });
    return absl::OkStatus();
  }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t bytes_installed() const { return bytes_.load(); }

 private:
  void Serve(int lfd, std::string socket) {
    int conn = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    close(lfd);
    unlink(socket.c_str());
    if (conn < 0) return;
    std::vector<char> buf(uffd::kHandshakeBufferSize);
    auto msg = RecvWithFds(conn, absl::MakeSpan(buf), 1);
    if (!msg.ok() || msg->fds.size() != 1) {
      close(conn);
      return;
    }
    auto hs = uffd::ParseHandshake({absl::string_view(buf.data(), msg->bytes), 1, false, false}, size_);
    if (!hs.ok()) {
      close(conn);
      return;
    }
    int uffd = msg->fds[0].get();
    const uffd::GuestRegion& r = hs->regions[0];
    const uint64_t ps = hs->page_size;
    pollfd pfd[2] = {{uffd, POLLIN, 0}, {conn, POLLRDHUP, 0}};
    while (!stop_) {
      int n = poll(pfd, 2, 100);
      if (n <= 0) continue;
      if (pfd[1].revents) break;
      uffd_msg m;
      if (read(uffd, &m, sizeof(m)) != sizeof(m)) continue;
      if (m.event != UFFD_EVENT_PAGEFAULT) continue;
      uint64_t addr = m.arg.pagefault.address & ~(ps - 1);
      uffdio_copy cp{};
      cp.dst = addr;
      cp.src = reinterpret_cast<uint64_t>(file_ + r.offset + (addr - r.base_host_virt_addr));
      cp.len = ps;
      while (ioctl(uffd, UFFDIO_COPY, &cp) < 0 && errno == EAGAIN) cp.copy = 0;
      if (cp.copy > 0) bytes_.fetch_add(static_cast<uint64_t>(cp.copy), std::memory_order_relaxed);
    }
    close(conn);
  }
  const uint8_t* file_;
  uint64_t size_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> bytes_{0};
  std::vector<std::thread> threads_;
};

// ------------------------------------------------------------------ parent

struct Options {
  std::vector<int> ks = {1, 8, 32, 64};
  std::vector<std::string> modes = {"tpc",          "ondemand",      "ondemand-nozero", "faultaround",
                                    "prefetch",     "prefetch-cold", "copy-floor",      "file-warm",
                                    "file-written", "file-cold"};
  int runs = 3;
  uint64_t ws = 16 << 20;
  uint64_t fault_around = 32 * 1024;
  int threads = 0;
  bool defer_taskrun = true;
  int loop_nice = 0;
  bool json = false;
  std::string log_level = "warn";
  std::string dir;
  std::string zero_layout = "runs";
  std::vector<uint64_t> page_sizes = {kPs};
};

std::string PsName(uint64_t ps) {
  return ps >= (1 << 20) ? absl::StrCat(ps >> 20, "m") : absl::StrCat(ps >> 10, "k");
}

// Each page size records its own working set: a 2 MiB recorder's faults stand
// for whole huge pages.
std::string WsetPath(const std::string& mem, uint64_t ps) {
  return absl::StrCat(mem, ".", PsName(ps), ".wset");
}

struct RunResult {
  double wall_ms = 0, faults_per_s = 0, p50_us = 0, p99_us = 0, rss_mib = 0, pss_mib = 0;
  double server_faults = 0;               // uffd page-fault events the page server saw (server modes)
  double srv_p50_us = 0, srv_p99_us = 0;  // server-side service time (event read -> page installed)
  double connect_ms = 0, ready_ms = 0;    // clock start -> every handshake sent; -> every clone released
  double installed_mib = 0;               // guest memory made resident (server, tpc, copy-floor modes)
  bool ok = true;
  std::string error;
};

void WriteMemFile(const std::string& path, uint64_t size, const std::string& layout, bool in_place = false) {
  const std::vector<bool> zero = ZeroLayout(size / kPs, layout);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (in_place ? 0 : O_TRUNC), 0644);
  std::vector<uint8_t> buf(4 << 20);
  for (uint64_t off = 0; off < size; off += buf.size()) {
    for (uint64_t po = 0; po < buf.size(); po += kPs) {
      uint64_t page = (off + po) / kPs;
      if (zero[page]) {
        memset(buf.data() + po, 0, kPs);
      } else {
        uint64_t x = page * 2654435761ull + 1;
        for (uint64_t i = 0; i < kPs; i += 8) {
          x = x * 6364136223846793005ull + 1442695040888963407ull;
          memcpy(buf.data() + po + i, &x, 8);
        }
      }
    }
    if (pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) < 0) perror("pwrite");
  }
  fsync(fd);
  close(fd);
}

// Writes the same bytes again, keeping the mtime (the page server's side
// files stay valid): the page cache is then as a freshly written snapshot
// leaves it (the kernel caches written files in larger folios than it reads
// them back in, and the File backend maps a folio per fault).
void RewriteInPlace(const std::string& path, uint64_t size, const std::string& layout) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return;
  WriteMemFile(path, size, layout, true);
  timespec times[2] = {st.st_atim, st.st_mtim};
  utimensat(AT_FDCWD, path.c_str(), times, 0);
}

void DropCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

// Reads the whole file so that it is in the page cache (untimed): the state
// of a snapshot read back from disk.
void WarmCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  std::vector<char> buf(1 << 20);
  while (read(fd, buf.data(), buf.size()) > 0) {
  }
  close(fd);
}

std::pair<double, double> RssPssMiB(pid_t pid) {
  FILE* f = fopen(absl::StrCat("/proc/", pid, "/smaps_rollup").c_str(), "r");
  if (!f) return {0, 0};
  char line[256];
  double rss = 0, pss = 0;
  while (fgets(line, sizeof(line), f)) {
    unsigned long kb;
    if (sscanf(line, "Rss: %lu kB", &kb) == 1) rss += static_cast<double>(kb) / 1024;
    if (sscanf(line, "Pss: %lu kB", &kb) == 1) pss += static_cast<double>(kb) / 1024;
    // hugetlbfs pages are not in Rss/Pss; a private one is the clone's alone.
    if (sscanf(line, "Private_Hugetlb: %lu kB", &kb) == 1) {
      rss += static_cast<double>(kb) / 1024;
      pss += static_cast<double>(kb) / 1024;
    }
  }
  fclose(f);
  return {rss, pss};
}

struct Clone {
  Process proc;
  int report = -1;  // read end
  int go = -1;      // write end
};

bool ReadLine(int fd, std::string* out, int timeout_ms) {
  out->clear();
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    char c;
    if (read(fd, &c, 1) != 1) return false;
    if ((c == 'R' || c == 'H') && out->empty()) {
      *out = std::string(1, c);
      return true;
    }
    if (c == '\n') return true;
    out->push_back(c);
  }
}

// Zeros to UFFDIO_COPY from into hugetlbfs memory (no UFFDIO_ZEROPAGE there),
// made as the page server makes its own: a read-only anonymous mapping whose
// every 4 KiB is the kernel's zero page.
const uint8_t* ZeroSource(uint64_t len) {
  static const uint8_t* zero = nullptr;
  static uint64_t size = 0;
  if (len <= size) return zero;
  void* m = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  madvise(m, len, MADV_NOHUGEPAGE);
  madvise(m, len, 22 /* MADV_POPULATE_READ */);
  zero = static_cast<const uint8_t*>(m);
  size = len;
  return zero;
}

bool AllZero(const uint8_t* p, uint64_t len) {
  static const uint8_t kZero[kPs] = {};
  for (uint64_t o = 0; o < len; o += kPs) {
    if (memcmp(p + o, kZero, kPs) != 0) return false;
  }
  return true;
}

// The guest pages of `ps` bytes that hold the working set's 4 KiB pages.
std::vector<uint64_t> WorkingSetPages(uint64_t guest, uint64_t ws, uint64_t ps) {
  std::vector<uint64_t> out;
  for (uint64_t p : WorkingSet(guest, ws)) out.push_back(p * kPs / ps);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// The kernel's floor for installing the K working sets: no page server, no
// clone processes, no handshakes. K registered anonymous regions (hugetlbfs
// with 2 MiB pages) in this process; every core's worth of threads installs
// them with the largest ioctls the working set allows (UFFDIO_COPY for data;
// UFFDIO_ZEROPAGE for zero pages, or with huge pages a UFFDIO_COPY from the
// zero source) from a populated mapping of the memory file. Only the
// installing is timed.
RunResult RunCopyFloor(const Options& o, int k, const std::string& mem, uint64_t guest, uint64_t ps) {
  RunResult res;
  UniqueFd fd(open(mem.c_str(), O_RDONLY | O_CLOEXEC));
  auto* src = static_cast<uint8_t*>(mmap(nullptr, guest, PROT_READ, MAP_SHARED, fd.get(), 0));
  if (src == MAP_FAILED) return {.ok = false, .error = "mmap memory file"};
  const std::vector<uint64_t> pages = WorkingSetPages(guest, o.ws, ps);
  const uint64_t max_run = std::max<uint64_t>(1, (2 << 20) / ps);
  const uint8_t* zero_src = ps > kPs ? ZeroSource(ps) : nullptr;
  struct Run {
    uint64_t page, count;
    bool zero;
  };
  std::vector<Run> runs;
  for (uint64_t p : pages) {
    bool zero = AllZero(src + p * ps, ps);
    if (!runs.empty() && runs.back().page + runs.back().count == p && runs.back().zero == zero &&
        runs.back().count < max_run) {
      ++runs.back().count;
    } else {
      runs.push_back({p, 1, zero});
    }
  }
  for (const Run& r : runs) {
    if (!r.zero) madvise(src + r.page * ps, r.count * ps, 22 /* MADV_POPULATE_READ */);
  }
  struct Dst {
    uint8_t* mem;
    UniqueFd uffd;
  };
  std::vector<Dst> dsts;
  const int huge = ps > kPs ? MAP_HUGETLB | (__builtin_ctzll(ps) << MAP_HUGE_SHIFT) : 0;
  for (int i = 0; i < k; ++i) {
    auto* m = static_cast<uint8_t*>(mmap(nullptr, guest, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | huge, -1, 0));
    UniqueFd u(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    uffdio_api api{};
    api.api = UFFD_API;
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(m);
    reg.range.len = guest;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (m == MAP_FAILED || !u || ioctl(u.get(), UFFDIO_API, &api) < 0 ||
        ioctl(u.get(), UFFDIO_REGISTER, &reg) < 0) {
      res = {.ok = false, .error = "copy-floor setup"};
      if (m != MAP_FAILED) munmap(m, guest);
      break;
    }
    dsts.push_back({m, std::move(u)});
  }
  if (res.ok && ps > kPs && zero_src == nullptr) res = {.ok = false, .error = "copy-floor zero source"};
  if (res.ok) {
    int threads = o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
    std::atomic<int> next{0};
    std::atomic<bool> failed{false};
    uint64_t t0 = NowNs();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < k;) {
          Dst& d = dsts[static_cast<size_t>(i)];
          for (const Run& r : runs) {
            int rc;
            if (r.zero && zero_src == nullptr) {
              uffdio_zeropage z{};
              z.range.start = reinterpret_cast<uint64_t>(d.mem) + r.page * ps;
              z.range.len = r.count * ps;
              rc = ioctl(d.uffd.get(), UFFDIO_ZEROPAGE, &z);
            } else {
              uffdio_copy c{};
              c.dst = reinterpret_cast<uint64_t>(d.mem) + r.page * ps;
              c.src = reinterpret_cast<uint64_t>(r.zero ? zero_src : src + r.page * ps);
              c.len = r.count * ps;
              rc = ioctl(d.uffd.get(), UFFDIO_COPY, &c);
            }
            if (rc < 0) failed = true;
          }
        }
      });
    }
    for (auto& t : ts) t.join();
    uint64_t t1 = NowNs();
    if (failed) {
      res = {.ok = false, .error = "copy-floor ioctl failed"};
    } else {
      res.wall_ms = static_cast<double>(t1 - t0) / 1e6;
      const uint64_t touches = WorkingSet(guest, o.ws).size() * static_cast<uint64_t>(k);
      res.faults_per_s = static_cast<double>(touches) / (static_cast<double>(t1 - t0) / 1e9);
      res.installed_mib = static_cast<double>(pages.size() * ps * static_cast<uint64_t>(k)) / (1 << 20);
    }
  }
  for (Dst& d : dsts) munmap(d.mem, guest);
  munmap(src, guest);
  return res;
}

RunResult RunOnce(const Options& o, const std::string& self, const std::string& mode, int k,
                  const std::string& mem, uint64_t guest, int run_index, uint64_t ps) {
  if (mode == "copy-floor") return RunCopyFloor(o, k, mem, guest, ps);
  RunResult res;
  const bool server_mode = mode == "ondemand" || mode == "ondemand-nozero" || mode == "faultaround" ||
                           mode == "prefetch" || mode == "prefetch-cold" || mode == "prefetch-nozero";
  const bool prefetch = mode == "prefetch" || mode == "prefetch-cold" || mode == "prefetch-nozero";
  // A known page-cache state for every run, whatever the run before left.
  DropCache(mem);
  if (mode == "file-written") {
    RewriteInPlace(mem, guest, o.zero_layout);
  } else if (mode != "file-cold" && mode != "prefetch-cold") {
    WarmCache(mem);
  }

  std::unique_ptr<uffd::PageServer> server;
  std::unique_ptr<ThreadPerClone> tpc;
  uint8_t* tpc_map = nullptr;
  std::vector<uffd::ListenerId> ids;
  std::vector<std::string> targets;
  if (server_mode) {
    auto s = uffd::PageServer::Create(
        {.threads = o.threads, .defer_taskrun = o.defer_taskrun, .loop_nice = o.loop_nice});
    if (!s.ok()) return {.ok = false, .error = s.status().ToString()};
    server = std::move(*s);
  } else if (mode == "tpc") {
    tpc_map = static_cast<uint8_t*>(
        mmap(nullptr, guest, PROT_READ, MAP_SHARED, open(mem.c_str(), O_RDONLY | O_CLOEXEC), 0));
    tpc = std::make_unique<ThreadPerClone>(tpc_map, guest);
  }
  for (int i = 0; i < k; ++i) {
    targets.push_back(server_mode || tpc ? absl::StrCat(o.dir, "/c", run_index, "-", i, ".sock") : mem);
  }
  // Per-clone server setup (socket, and for prefetch the snapshot's plan and
  // source pages, read from disk when cold) is inside the measured time.
  auto add_listeners = [&]() -> absl::Status {
    for (int i = 0; i < k; ++i) {
      const std::string& sock = targets[static_cast<size_t>(i)];
      if (server_mode) {
        uffd::ListenerSpec spec;
        spec.socket_path = sock;
        spec.files.mem_file_path = mem;
        spec.files.working_set_path = WsetPath(mem, ps);
        spec.fault_around_bytes = mode == "faultaround" || prefetch ? o.fault_around : 0;
        spec.zero_elision = mode != "ondemand-nozero" && mode != "prefetch-nozero";
        spec.policy = prefetch ? uffd::ClonePolicy::kPrefetch : uffd::ClonePolicy::kNone;
        spec.paused_during_prefetch = prefetch;  // clones touch nothing before WaitPrefetchDone returns
        spec.tag = absl::StrCat("clone", i);
        auto id = server->AddListener(spec);
        if (!id.ok()) return id.status();
        ids.push_back(*id);
      } else if (tpc) {
        RETURN_IF_ERROR(tpc->Add(sock));
      }
    }
    return absl::OkStatus();
  };
  std::vector<Clone> clones(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) {
    int rp[2], gp[2];
    if (pipe2(rp, O_CLOEXEC) < 0 || pipe2(gp, O_CLOEXEC) < 0) return {.ok = false, .error = "pipe"};
    SpawnOptions so;
    so.argv = {self,
               "--clone",
               server_mode || tpc ? "uffd" : "file",
               targets[static_cast<size_t>(i)],
               std::to_string(guest),
               std::to_string(o.ws),
               std::to_string(ps)};
    so.fds = {{2, 2}, {rp[1], 3}, {gp[0], 4}};
    so.parent_death_signal = SIGKILL;  // an interrupted bench leaves no frozen clone
    auto p = Process::Spawn(so);
    close(rp[1]);
    close(gp[0]);
    if (!p.ok()) return {.ok = false, .error = p.status().ToString()};
    clones[static_cast<size_t>(i)] = Clone{std::move(*p), rp[0], gp[1]};
  }
  std::string line;
  for (auto& c : clones) {
    if (!ReadLine(c.report, &line, 30000) || line != "R") {
      res = {.ok = false, .error = "clone did not get ready"};
      break;
    }
  }
  uint64_t t0 = NowNs();
  if (res.ok) {
    if (absl::Status st = add_listeners(); !st.ok()) res = {.ok = false, .error = st.ToString()};
  }
  if (res.ok) {
    for (auto& c : clones) {
      if (write(c.go, "c", 1) != 1) res = {.ok = false, .error = "connect"};
    }
    for (auto& c : clones) {
      if (!ReadLine(c.report, &line, 30000) || line != "H") {
        res = {.ok = false, .error = "clone did not connect"};
        break;
      }
    }
  }
  const uint64_t t_connected = NowNs();
  if (res.ok && server) {
    for (auto id : ids) {
      auto st = server->WaitPrefetchDone(id, absl::Now() + absl::Seconds(60));
      if (!st.ok()) {
        res = {.ok = false, .error = st.ToString()};
        break;
      }
    }
  }
  std::vector<double> p50s, p99s;
  uint64_t faults = 0;
  const uint64_t t_ready = NowNs();
  if (res.ok) {
    for (auto& c : clones) {
      if (write(c.go, "g", 1) != 1) res = {.ok = false, .error = "go"};
    }
    for (auto& c : clones) {
      if (!ReadLine(c.report, &line, 120000) || line.empty() || line[0] != 'D') {
        res = {.ok = false, .error = "clone did not finish"};
        break;
      }
      unsigned long long n, p50, p99, wall, x;
      sscanf(line.c_str(), "D %llu %llu %llu %llu %llu", &n, &p50, &p99, &wall, &x);
      faults += n;
      p50s.push_back(static_cast<double>(p50) / 1000);
      p99s.push_back(static_cast<double>(p99) / 1000);
    }
  }
  uint64_t t1 = NowNs();
  if (res.ok) {
    res.wall_ms = static_cast<double>(t1 - t0) / 1e6;
    res.connect_ms = static_cast<double>(t_connected - t0) / 1e6;
    res.ready_ms = static_cast<double>(t_ready - t0) / 1e6;
    res.faults_per_s = static_cast<double>(faults) / (static_cast<double>(t1 - t0) / 1e9);
    std::sort(p50s.begin(), p50s.end());
    std::sort(p99s.begin(), p99s.end());
    res.p50_us = p50s[p50s.size() / 2];  // median clone's p50
    res.p99_us = p99s.back();            // worst clone's p99
    for (auto& c : clones) {
      auto [rss, pss] = RssPssMiB(c.proc.pid());
      res.rss_mib += rss;
      res.pss_mib += pss;
    }
  }
  if (res.ok && server) {
    uffd::PageStats total = server->GetStats().total;
    res.server_faults = static_cast<double>(total.faults);
    res.srv_p50_us = total.p50_us();
    res.srv_p99_us = total.p99_us();
    // Stats count 4 KiB pages whatever the guest page size.
    res.installed_mib = static_cast<double>((total.pages_copied + total.zero_pages) * kPs) / (1 << 20);
  }
  if (res.ok && tpc) res.installed_mib = static_cast<double>(tpc->bytes_installed()) / (1 << 20);
  for (auto& c : clones) {
    close(c.go);
    close(c.report);
  }
  for (auto& c : clones) {
    auto st = c.proc.Wait(absl::Seconds(20));
    if (!st.ok()) (void)c.proc.Kill();
  }
  if (server) server->Stop();
  if (tpc) tpc->Stop();
  if (tpc_map) munmap(tpc_map, guest);
  return res;
}

void Record(const Options& o, const std::string& self, const std::string& mem, uint64_t guest, uint64_t ps) {
  auto s = uffd::PageServer::Create({.threads = 1});
  if (!s.ok()) return;
  uffd::ListenerSpec spec;
  spec.socket_path = o.dir + "/record.sock";
  spec.files.mem_file_path = mem;
  spec.files.working_set_path = WsetPath(mem, ps);
  spec.fault_around_bytes = 0;
  spec.policy = uffd::ClonePolicy::kRecord;
  auto id = (*s)->AddListener(spec);
  if (!id.ok()) return;
  int rp[2], gp[2];
  if (pipe2(rp, O_CLOEXEC) < 0 || pipe2(gp, O_CLOEXEC) < 0) return;
  SpawnOptions so;
  so.argv = {self,
             "--clone",
             "uffd",
             spec.socket_path,
             std::to_string(guest),
             std::to_string(o.ws),
             std::to_string(ps)};
  so.fds = {{2, 2}, {rp[1], 3}, {gp[0], 4}};
  so.parent_death_signal = SIGKILL;
  auto p = Process::Spawn(so);
  close(rp[1]);
  close(gp[0]);
  std::string line;
  ReadLine(rp[0], &line, 30000);
  if (write(gp[1], "c", 1) != 1) return;
  ReadLine(rp[0], &line, 30000);
  if (write(gp[1], "g", 1) != 1) return;
  ReadLine(rp[0], &line, 60000);
  close(gp[1]);
  close(rp[0]);
  if (p.ok()) (void)p->Wait(absl::Seconds(20));
  (void)(*s)->RemoveListener(*id);
  (*s)->Stop();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--clone") return CloneMain(argc, argv);
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) -> std::string {
      std::string prefix = std::string(name) + "=";
      return a.rfind(prefix, 0) == 0 ? a.substr(prefix.size()) : "";
    };
    if (a == "--json") {
      o.json = true;
    } else if (!val("--log").empty()) {
      o.log_level = val("--log");
    } else if (!val("--loop-nice").empty()) {
      o.loop_nice = std::stoi(val("--loop-nice"));
    } else if (a == "--no-defer-taskrun") {
      o.defer_taskrun = false;
    } else if (a == "--quick") {
      o.ks = {1, 8};
      o.runs = 1;
    } else if (!val("--k").empty()) {
      o.ks.clear();
      for (auto s : absl::StrSplit(val("--k"), ',')) o.ks.push_back(std::stoi(std::string(s)));
    } else if (!val("--modes").empty()) {
      o.modes.clear();
      for (auto s : absl::StrSplit(val("--modes"), ',')) o.modes.emplace_back(s);
    } else if (!val("--runs").empty()) {
      o.runs = std::stoi(val("--runs"));
    } else if (!val("--ws-mib").empty()) {
      o.ws = std::stoull(val("--ws-mib")) << 20;
    } else if (!val("--fault-around-kib").empty()) {
      o.fault_around = std::stoull(val("--fault-around-kib")) << 10;
    } else if (!val("--threads").empty()) {
      o.threads = std::stoi(val("--threads"));
    } else if (val("--zero-layout") == "runs" || val("--zero-layout") == "alternate") {
      o.zero_layout = val("--zero-layout");
    } else if (!val("--dir").empty()) {
      o.dir = val("--dir");
    } else if (!val("--page-size").empty()) {
      o.page_sizes.clear();
      for (auto s : absl::StrSplit(val("--page-size"), ',')) {
        if (s == "4k") {
          o.page_sizes.push_back(kPs);
        } else if (s == "2m") {
          o.page_sizes.push_back(2 << 20);
        } else {
          fprintf(stderr, "--page-size: 4k, 2m or both (4k,2m), not %s\n", std::string(s).c_str());
          return 1;
        }
      }
    } else {
      fprintf(stderr,
              "usage: fcvm-pager-bench [--k=1,8,32,64] "
              "[--modes=tpc,ondemand,ondemand-nozero,faultaround,prefetch,"
              "prefetch-cold,copy-floor,file-warm,file-written,file-cold] [--runs=3] [--ws-mib=16] "
              "[--fault-around-kib=32] [--threads=N]"
              " [--zero-layout=runs|alternate] [--page-size=4k|2m|4k,2m] [--no-defer-taskrun] [--loop-nice=0]"
              " [--log=warn] [--dir=D] [--json] [--quick]\n");
      return 1;
    }
  }
  (void)InitLogging(o.log_level, "fcvm-pager-bench");
  signal(SIGPIPE, SIG_IGN);
  bool own_dir = o.dir.empty();
  if (own_dir) {
    char tmpl[] = "/var/tmp/fcvm-pager-bench-XXXXXX";
    if (!mkdtemp(tmpl)) {
      perror("mkdtemp");
      return 1;
    }
    o.dir = tmpl;
  }
  std::string self = std::filesystem::canonical("/proc/self/exe").string();
  auto guest_of = [](int k) { return k >= 64 ? 64ull << 20 : 256ull << 20; };
  // Huge pages for the 2 MiB runs: one run's clones (or copy-floor regions)
  // at a time, plus slack; given back at the end.
  std::optional<HugePageReservation> huge_pool;
  if (std::find(o.page_sizes.begin(), o.page_sizes.end(), 2u << 20) != o.page_sizes.end()) {
    uint64_t need = 0;
    for (int k : o.ks) need = std::max<uint64_t>(need, static_cast<uint64_t>(k) * guest_of(k) / (2 << 20));
    auto r = HugePageReservation::Add(need + 16);
    if (!r.ok()) {
      fprintf(stderr, "fcvm-pager-bench: no 2 MiB runs: %s\n", std::string(r.status().message()).c_str());
      o.page_sizes.erase(std::remove(o.page_sizes.begin(), o.page_sizes.end(), 2u << 20), o.page_sizes.end());
      if (o.page_sizes.empty()) return 1;
    } else {
      huge_pool = std::move(*r);
      // Touch every page of the pool once, untimed: the first use of freshly
      // reserved huge pages is much slower here (the host behind this VM backs
      // its memory on first touch), and would land on whichever run came first.
      const uint64_t len = huge_pool->pages() * (2 << 20);
      uint64_t t0 = NowNs();
      void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
      if (m != MAP_FAILED) {
        for (uint64_t off = 0; off < len; off += 4096) static_cast<volatile uint8_t*>(m)[off] = 1;
        munmap(m, len);
      }
      fprintf(stderr, "fcvm-pager-bench: %lu huge pages added to the pool and touched once in %.0f ms\n",
              static_cast<unsigned long>(huge_pool->pages()), static_cast<double>(NowNs() - t0) / 1e6);
    }
  }
  // One memory file per guest size.
  std::map<uint64_t, std::string> mems;
  for (int k : o.ks) {
    uint64_t guest = guest_of(k);
    if (!mems.count(guest)) {
      std::string path = absl::StrCat(o.dir, "/mem-", guest >> 20, "M");
      WriteMemFile(path, guest, o.zero_layout);
      mems[guest] = path;
      bool wants_prefetch = std::find_if(o.modes.begin(), o.modes.end(), [](const std::string& m) {
                              return m.rfind("prefetch", 0) == 0;
                            }) != o.modes.end();
      if (wants_prefetch) {
        for (uint64_t ps : o.page_sizes) Record(o, self, path, guest, ps);
      }
    }
  }
  struct Row {
    std::string mode;
    int k;
    uint64_t ps;
    RunResult med;
    int failed = 0;
    std::string error;
  };
  auto loadavg = [] {
    std::string s;
    FILE* f = fopen("/proc/loadavg", "r");
    char buf[128] = {};
    if (f && fgets(buf, sizeof(buf), f)) s = std::string(buf).substr(0, 14);
    if (f) fclose(f);
    return s;
  };
  std::string load_before = loadavg();
  std::vector<Row> rows;
  int run_index = 0;
  for (int k : o.ks) {
    uint64_t guest = guest_of(k);
    for (uint64_t ps : o.page_sizes) {
      for (const std::string& mode : o.modes) {
        // Firecracker refuses a File restore of a hugetlbfs snapshot.
        if (ps > kPs && mode.rfind("file", 0) == 0) continue;
        std::vector<RunResult> rs;
        Row row{mode, k, ps, {}};
        for (int r = 0; r < o.runs; ++r) {
          RunResult one = RunOnce(o, self, mode, k, mems[guest], guest, run_index++, ps);
          if (!one.ok) {
            ++row.failed;
            row.error = one.error;
            continue;
          }
          rs.push_back(one);
        }
        auto med = [&](double RunResult::*f) {
          std::vector<double> v;
          for (auto& x : rs) v.push_back(x.*f);
          return Median(v);
        };
        row.med = {
            med(&RunResult::wall_ms),       med(&RunResult::faults_per_s), med(&RunResult::p50_us),
            med(&RunResult::p99_us),        med(&RunResult::rss_mib),      med(&RunResult::pss_mib),
            med(&RunResult::server_faults), med(&RunResult::srv_p50_us),   med(&RunResult::srv_p99_us),
            med(&RunResult::connect_ms),    med(&RunResult::ready_ms),     med(&RunResult::installed_mib)};
        rows.push_back(row);
        if (!o.json) {
          fprintf(stderr, "  done: K=%d %s %-16s wall %.1f ms (connected %.1f, released %.1f)%s\n", k,
                  PsName(ps).c_str(), mode.c_str(), row.med.wall_ms, row.med.connect_ms, row.med.ready_ms,
                  row.failed ? absl::StrCat(" (", row.failed, " failed runs: ", row.error, ")").c_str() : "");
        }
      }
    }
  }
  // The row of `mode` at K and page size `ps`; File rows only exist with 4 KiB.
  auto find = [&](const std::string& mode, int k, uint64_t ps = kPs) -> const Row* {
    if (mode.rfind("file", 0) == 0) ps = kPs;
    for (auto& r : rows) {
      if (r.mode == mode && r.k == k && r.ps == ps) return &r;
    }
    return nullptr;
  };
  auto mib_per_s = [](const Row& r) {
    return r.med.wall_ms > 0 ? r.med.installed_mib / (r.med.wall_ms / 1000) : 0.0;
  };
  std::string load_after = loadavg();
  auto mib_s_str = [&](const Row& r) {
    double v = mib_per_s(r);
    return v > 0 ? absl::StrFormat("%.0f", v) : std::string("-");
  };
  if (o.json) {
    printf(
        "{\"ws_bytes\":%lu,\"zero_layout\":\"%s\",\"runs\":%d,\"fault_around\":%lu,\"loadavg_before\":\"%s\","
        "\"loadavg_after\":\"%s\",\"results\":[",
        static_cast<unsigned long>(o.ws), o.zero_layout.c_str(), o.runs,
        static_cast<unsigned long>(o.fault_around), load_before.c_str(), load_after.c_str());
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      const Row* base = find("tpc", r.k, r.ps);
      printf(
          "%s{\"mode\":\"%s\",\"k\":%d,\"page_size\":%lu,\"wall_ms\":%.3f,\"touches_per_s\":%.0f,"
          "\"installed_mib\":%.1f,\"installed_mib_per_s\":%.0f,\"server_faults\":%.0f,\"srv_"
          "p50_us\":%.2f,\"srv_p99_us\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
          "\"rss_mib\":%.1f,\"pss_mib\":%.1f,\"connect_ms\":%.3f,\"release_ms\":%.3f,\"vs_tpc_wall\":%.3f,"
          "\"failed_runs\":%d}",
          i ? "," : "", r.mode.c_str(), r.k, static_cast<unsigned long>(r.ps), r.med.wall_ms,
          r.med.faults_per_s, r.med.installed_mib, mib_per_s(r), r.med.server_faults, r.med.srv_p50_us,
          r.med.srv_p99_us, r.med.p50_us, r.med.p99_us, r.med.rss_mib, r.med.pss_mib, r.med.connect_ms,
          r.med.ready_ms, base && base->med.wall_ms > 0 ? r.med.wall_ms / base->med.wall_ms : 0.0, r.failed);
    }
    printf("]}\n");
  } else {
    printf(
        "fcvm-pager-bench: W=%lu MiB, zero layout %s, medians of %d run(s), fault-around %lu KiB, %d loop "
        "thread(s), %u CPUs, loadavg %s -> %s\n",
        static_cast<unsigned long>(o.ws >> 20), o.zero_layout.c_str(), o.runs,
        static_cast<unsigned long>(o.fault_around >> 10),
        o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency()),
        std::thread::hardware_concurrency(), load_before.c_str(), load_after.c_str());
    printf("%-4s %-3s %-16s %10s %12s %8s %10s %8s %8s %9s %9s %10s %10s %8s %8s %8s\n", "K", "ps", "mode",
           "wall_ms", "touches/s", "MiB/s", "srv_faults", "srv_p50", "srv_p99", "p50_us", "p99_us", "RSS_MiB",
           "PSS_MiB", "vs_tpc", "vs_fw", "vs_fc");
    for (const Row& r : rows) {
      const Row* base = find("tpc", r.k, r.ps);
      const Row* fw = find("file-warm", r.k);
      const Row* fc = find("file-cold", r.k);
      auto ratio = [&](const Row* b) {
        return b && b->med.wall_ms > 0 ? absl::StrFormat("%.2f", r.med.wall_ms / b->med.wall_ms)
                                       : std::string("-");
      };
      printf("%-4d %-3s %-16s %10.1f %12.0f %8s %10.0f %8.1f %8.1f %9.1f %9.1f %10.1f %10.1f %8s %8s %8s%s\n",
             r.k, PsName(r.ps).c_str(), r.mode.c_str(), r.med.wall_ms, r.med.faults_per_s,
             mib_s_str(r).c_str(), r.med.server_faults, r.med.srv_p50_us, r.med.srv_p99_us, r.med.p50_us,
             r.med.p99_us, r.med.rss_mib, r.med.pss_mib, ratio(base).c_str(), ratio(fw).c_str(),
             ratio(fc).c_str(), r.failed ? "  (failures)" : "");
    }
    printf(
        "(ps: guest page size; touches/s: first touches of distinct 4 KiB pages by all clones per second of "
        "wall\n"
        " time, = faults/s with 4 KiB pages and neither fault-around nor prefetch; MiB/s: guest memory "
        "installed\n"
        " per second of wall time; srv_faults: uffd fault events the page server saw; p50: median clone's "
        "p50,\n"
        " p99: worst clone's p99, both measured in the clone around each first touch; RSS/PSS: sum over "
        "clones;\n"
        " vs_*: wall-time ratio to thread-per-clone (same page size), File warm, File cold of the same K)\n");
    // prefetch-then-resume against its baselines, per K and page size.
    for (int k : o.ks) {
      for (uint64_t ps : o.page_sizes) {
        const Row* pf = find("prefetch", k, ps);
        if (pf == nullptr || pf->med.wall_ms <= 0) continue;
        std::string line = absl::StrFormat("prefetch K=%d %s:", k, PsName(ps));
        for (const char* base : {"copy-floor", "file-warm", "file-written", "file-cold"}) {
          const Row* b = find(base, k, ps);
          if (b != nullptr && b->med.wall_ms > 0) {
            absl::StrAppendFormat(&line, " %.2fx %s", pf->med.wall_ms / b->med.wall_ms, base);
          }
        }
        printf("%s\n", line.c_str());
      }
    }
    // 2 MiB against 4 KiB pages, per K and mode: installed MiB/s ratio and wall ratio.
    if (o.page_sizes.size() > 1) {
      for (int k : o.ks) {
        for (const std::string& mode : o.modes) {
          const Row* a = find(mode, k, kPs);
          const Row* b = find(mode, k, 2 << 20);
          if (a == nullptr || b == nullptr || a->mode.rfind("file", 0) == 0 || mib_per_s(*a) <= 0) continue;
          printf("2m vs 4k K=%d %s: %.2fx installed MiB/s (%.0f vs %.0f), %.2fx wall (%.1f vs %.1f ms)\n", k,
                 mode.c_str(), mib_per_s(*b) / mib_per_s(*a), mib_per_s(*b), mib_per_s(*a),
                 b->med.wall_ms / a->med.wall_ms, b->med.wall_ms, a->med.wall_ms);
        }
      }
    }
  }
  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(o.dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace fcvm::bench

int main(int argc, char** argv) { return fcvm::bench::Main(argc, argv); }
