// A stand-in for Firecracker's side of the Uffd memory backend, for the page
// server's integration tests and benchmark.
//
// Maps anonymous memory (one or two regions), creates a userfaultfd with
// UFFD_FEATURE_EVENT_REMOVE, registers the regions in MISSING mode, connects
// to the page server's socket and sends the handshake exactly as Firecracker
// does (bare JSON array + the uffd as the only SCM_RIGHTS fd). Then touches
// pages from several threads in random order and checks every byte against
// the memory file.
//
// --page-size=2097152 maps the guest memory as Firecracker does for
// "huge_pages": "2M": MAP_HUGETLB | MAP_NORESERVE (pages come from the
// hugetlb pool when the page server installs them). Page numbers in every
// option are in pages of that size.
//
// Exit codes: 0 all good, 1 usage, 2 setup failed, 3 wrong content,
// 4 a removed range did not read back as zeros, 7 deliberate mid-flight exit.

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Args {
  std::string socket, memfile, ready_file, start_file, bad;
  uint64_t size = 0;  // 0 = the memory file's size
  int regions = 1;
  int threads = 4;
  bool touch = true;
  uint64_t touch_pages = 0;  // 0 = all
  int64_t remove_first = -1;
  uint64_t remove_count = 0;
  int remove_storm = 0;
  uint64_t exit_after = 0;
  bool hold = false;
  uint64_t touch_delay_us = 0;
  bool lie = false;        // announce only the first half of the memory
  uint64_t page_size = 0;  // 0 = the base page size
  // Pages whose first two 4 KiB pieces are madvise(DONTNEED)ed, one at a
  // time, before anything is touched: no kernel drops part of a huge page,
  // so they must still read as the memory file afterwards.
  std::vector<uint64_t> remove_sub;
};

bool Flag(const char* arg, const char* name, std::string* out) {
  size_t n = strlen(name);
  if (strncmp(arg, name, n) == 0 && arg[n] == '=') {
    *out = arg + n + 1;
    return true;
  }
  return false;
}

[[noreturn]] void Die(int code, const char* what) {
  fprintf(stderr, "fake_vmm[%d]: %s: %s\n", getpid(), what, strerror(errno));
  _exit(code);
}

struct Region {
  uint8_t* addr;
  uint64_t size;
  uint64_t offset;
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (Flag(argv[i], "--socket", &v))
      a.socket = v;
    else if (Flag(argv[i], "--memfile", &v))
      a.memfile = v;
    else if (Flag(argv[i], "--size", &v))
      a.size = std::stoull(v);
    else if (Flag(argv[i], "--regions", &v))
      a.regions = std::stoi(v);
    else if (Flag(argv[i], "--threads", &v))
      a.threads = std::stoi(v);
    else if (Flag(argv[i], "--touch", &v))
      a.touch = v != "none";
    else if (Flag(argv[i], "--touch-pages", &v))
      a.touch_pages = std::stoull(v);
    else if (Flag(argv[i], "--remove", &v)) {
      a.remove_first = std::stoll(v.substr(0, v.find(':')));
      a.remove_count = std::stoull(v.substr(v.find(':') + 1));
    } else if (Flag(argv[i], "--remove-storm", &v))
      a.remove_storm = std::stoi(v);
    else if (Flag(argv[i], "--exit-after", &v))
      a.exit_after = std::stoull(v);
    else if (Flag(argv[i], "--ready-file", &v))
      a.ready_file = v;
    else if (Flag(argv[i], "--start-file", &v))
      a.start_file = v;
    else if (Flag(argv[i], "--bad", &v))
      a.bad = v;
    else if (Flag(argv[i], "--touch-delay-us", &v))
      a.touch_delay_us = std::stoull(v);
    else if (Flag(argv[i], "--page-size", &v))
      a.page_size = std::stoull(v);
    else if (Flag(argv[i], "--remove-sub", &v)) {
      for (size_t pos = 0; pos < v.size();) {
        size_t comma = v.find(',', pos);
        if (comma == std::string::npos) comma = v.size();
        a.remove_sub.push_back(std::stoull(v.substr(pos, comma - pos)));
        pos = comma + 1;
      }
    } else if (strcmp(argv[i], "--hold") == 0)
      a.hold = true;
    else if (strcmp(argv[i], "--lie") == 0)
      a.lie = true;
    else {
      fprintf(stderr, "fake_vmm: unknown argument %s\n", argv[i]);
      return 1;
    }
  }
  if (a.socket.empty() || a.memfile.empty() || a.threads < 1 || a.regions < 1 || a.regions > 2) {
    fprintf(stderr, "usage: fake_vmm --socket=P --memfile=F [--size=B] [--regions=1|2] [--threads=N] ...\n");
    return 1;
  }
  const uint64_t base_ps = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t ps = a.page_size ? a.page_size : base_ps;
  const bool huge = ps > base_ps;
  int mfd = open(a.memfile.c_str(), O_RDONLY | O_CLOEXEC);
  if (mfd < 0) Die(2, "open memfile");
  struct stat st;
  if (fstat(mfd, &st) < 0) Die(2, "fstat");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (a.size == 0) a.size = file_size;
  const uint8_t* file = static_cast<const uint8_t*>(mmap(nullptr, file_size, PROT_READ, MAP_SHARED, mfd, 0));
  if (file == MAP_FAILED) Die(2, "mmap memfile");

  std::vector<Region> regions;
  uint64_t first_size = a.regions == 2 ? (a.size / 2) / ps * ps : a.size;
  for (int r = 0; r < a.regions; ++r) {
    uint64_t sz = r == 0 ? first_size : a.size - first_size;
    const int huge_flags = huge ? MAP_HUGETLB | (__builtin_ctzll(ps) << MAP_HUGE_SHIFT) : 0;
    void* m = mmap(nullptr, sz, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | huge_flags, -1, 0);
    if (m == MAP_FAILED) Die(2, "mmap guest memory");
    regions.push_back({static_cast<uint8_t*>(m), sz, r == 0 ? 0 : first_size});
  }

  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) Die(2, "userfaultfd");
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_REMOVE;
  if (ioctl(uffd, UFFDIO_API, &api) < 0) Die(2, "UFFDIO_API");
  for (const Region& r : regions) {
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(r.addr);
    reg.range.len = r.size;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) Die(2, "UFFDIO_REGISTER");
  }

  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) Die(2, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", a.socket.c_str());
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) Die(2, "connect");

  std::string json = "[";
  for (size_t i = 0; i < regions.size(); ++i) {
    if (i) json += ",";
    json += "{\"base_host_virt_addr\":" + std::to_string(reinterpret_cast<uint64_t>(regions[i].addr)) +
            ",\"size\":" + std::to_string(a.lie ? regions[i].size / 2 / ps * ps : regions[i].size) +
            ",\"offset\":" + std::to_string(regions[i].offset) + ",\"page_size\":" + std::to_string(ps) +
            ",\"page_size_kib\":" + std::to_string(ps) + "}";
  }
  json += "]";
  if (a.bad == "json") json = "this is not json";
  if (a.bad == "trailing-nul") json += std::string("\0garbage", 8);
  iovec iov{json.data(), json.size()};
  char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &uffd, sizeof(int));
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(json.size())) Die(2, "sendmsg");
  if (!a.bad.empty()) {
    // Wait to be killed (the server's kill policy) or for the socket to close.
    char c;
    while (read(sock, &c, 1) > 0) {
    }
    pause();
    return 0;
  }

  if (!a.start_file.empty()) {
    struct stat s2;
    while (stat(a.start_file.c_str(), &s2) != 0) usleep(1000);
  }

  // Page p of the guest (0..total) -> (region, offset in region).
  const uint64_t total_pages = a.size / ps;
  auto guest_ptr = [&](uint64_t page) -> uint8_t* {
    uint64_t off = page * ps;
    for (const Region& r : regions) {
      if (off >= r.offset && off < r.offset + r.size) return r.addr + (off - r.offset);
    }
    return nullptr;
  };
  for (uint64_t p : a.remove_sub) {
    if (p >= total_pages) continue;
    for (uint64_t piece : {base_ps, uint64_t{0}}) {  // an unaligned start, then an aligned one
      int rc = madvise(guest_ptr(p) + piece, base_ps, MADV_DONTNEED);
      fprintf(stderr, "fake_vmm[%d]: madvise(DONTNEED) of page %lu +%lu, %lu bytes: %s\n", getpid(),
              static_cast<unsigned long>(p), static_cast<unsigned long>(piece),
              static_cast<unsigned long>(base_ps), rc == 0 ? "ok" : strerror(errno));
    }
  }
  uint64_t touch_limit = a.touch_pages ? std::min(a.touch_pages, total_pages) : total_pages;
  // With a storm, the last eighth is being removed concurrently: not checked.
  uint64_t storm_first = total_pages - total_pages / 8;
  if (a.remove_storm > 0) touch_limit = std::min(touch_limit, storm_first);

  std::atomic<uint64_t> touched{0};
  std::atomic<int> failure{0};
  std::atomic<bool> storm_done{false};
  std::thread storm;
  if (a.remove_storm > 0) {
    storm = std::thread([&] {
      std::mt19937_64 rng(getpid());
      for (int i = 0; i < a.remove_storm; ++i) {
        uint64_t p = storm_first + rng() % (total_pages - storm_first);
        uint8_t* ptr = guest_ptr(p);
        volatile uint8_t v = *ptr;  // populate it, then drop it
        (void)v;
        madvise(ptr, ps, MADV_DONTNEED);
      }
      storm_done = true;
    });
  }
  if (a.touch) {
    std::vector<std::thread> threads;
    for (int t = 0; t < a.threads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint64_t> pages;
        for (uint64_t p = static_cast<uint64_t>(t); p < touch_limit; p += static_cast<uint64_t>(a.threads)) {
          pages.push_back(p);
        }
        std::mt19937_64 rng(static_cast<uint64_t>(getpid()) * 31 + static_cast<uint64_t>(t));
        std::shuffle(pages.begin(), pages.end(), rng);
        for (uint64_t p : pages) {
          const uint8_t* g = guest_ptr(p);
          volatile uint8_t first = *g;  // the fault
          (void)first;
          if (memcmp(g, file + p * ps, ps) != 0) {
            fprintf(stderr, "fake_vmm[%d]: page %lu differs from the memory file\n", getpid(),
                    static_cast<unsigned long>(p));
            failure = 3;
            return;
          }
          uint64_t n = touched.fetch_add(1) + 1;
          if (a.exit_after && n >= a.exit_after) _exit(7);
          if (a.touch_delay_us) usleep(static_cast<useconds_t>(a.touch_delay_us));
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  if (storm.joinable()) storm.join();
  if (failure) return failure;

  if (a.remove_first >= 0 && a.remove_count > 0) {
    uint64_t first = static_cast<uint64_t>(a.remove_first);
    for (uint64_t p = first; p < first + a.remove_count && p < total_pages; ++p) {
      if (madvise(guest_ptr(p), ps, MADV_DONTNEED) < 0) Die(2, "madvise");
    }
    const std::vector<uint8_t> zero(ps, 0);
    for (uint64_t p = first; p < first + a.remove_count && p < total_pages; ++p) {
      if (memcmp(guest_ptr(p), zero.data(), ps) != 0) {
        fprintf(stderr, "fake_vmm[%d]: removed page %lu is not zero\n", getpid(),
                static_cast<unsigned long>(p));
        return 4;
      }
    }
    // Pages outside the removed range keep their content.
    for (uint64_t p = 0; p < touch_limit; ++p) {
      if (p >= first && p < first + a.remove_count) continue;
      if (memcmp(guest_ptr(p), file + p * ps, ps) != 0) {
        fprintf(stderr, "fake_vmm[%d]: page %lu changed after remove\n", getpid(),
                static_cast<unsigned long>(p));
        return 3;
      }
    }
  }
  if (!a.ready_file.empty()) {
    int fd = open(a.ready_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
  }
  if (a.hold) {
    // Keep faulting on the untouched part, forever: a server that stops must
    // kill us; otherwise we are frozen here.
    for (uint64_t p = touch_limit;; ++p) {
      if (p >= total_pages) {
        p = 0;
        usleep(1000);
      }
      volatile uint8_t v = *guest_ptr(p);
      (void)v;
    }
  }
  close(sock);
  return 0;
}
