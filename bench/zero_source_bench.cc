// fcvm-zero-source-bench: how to install a zero 2 MiB hugetlbfs page with
// userfaultfd. UFFDIO_ZEROPAGE is EINVAL on hugetlbfs (checked here too), so
// the page server UFFDIO_COPYs zeros from somewhere; this compares the
// candidate sources, one UFFDIO_COPY of 2 MiB per page into a registered
// MAP_HUGETLB | MAP_NORESERVE region (as Firecracker maps a "huge_pages": "2M"
// guest), against copying the same pages from a data buffer in the same run:
//
//   zeropage-4k   read-only anonymous mapping never written, MADV_NOHUGEPAGE,
//                 populated by reading: 512 mappings of the kernel's one 4 KiB
//                 zero page (what lib/uffd uses: no memory, cache-hot source)
//   zeropage-thp  the same with MADV_HUGEPAGE: the huge zero page (2 MiB source)
//   memset-4k     a private 2 MiB buffer written with zeros (4 KiB pages)
//   hugetlb-buf   a 2 MiB hugetlbfs page written with zeros
//   data          a private 2 MiB buffer of non-zero bytes (the baseline)
//
//   fcvm-zero-source-bench [pages=64] [reps=9]
//
// Needs root: it adds pages+2 huge pages to the pool for the run (given back
// at the end) and touches them once first (the first use of freshly reserved
// huge pages is much slower on some hosts). Prints a table and a JSON line:
// median microseconds per 2 MiB page over `reps` runs and the ratio to `data`.

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/base/hugetlb.h"
#include "lib/base/unique_fd.h"

namespace fcvm::bench {
namespace {

constexpr uint64_t kHuge = 2 << 20;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// A 2 MiB-aligned 2 MiB anonymous buffer with `advice`, zeroed by writing or
// (write = false) only read, so it maps the zero page.
uint8_t* Anonymous(int advice, bool write, uint8_t fill = 0) {
  auto* raw = static_cast<uint8_t*>(
      mmap(nullptr, 2 * kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (raw == MAP_FAILED) return nullptr;
  auto* p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) & ~(kHuge - 1));
  madvise(p, kHuge, advice);
  if (write) {
    for (uint64_t i = 0; i < kHuge; i += 8) {
      uint64_t v = fill == 0 ? 0 : (i * 0x9E3779B97F4A7C15ull) | 1;
      memcpy(p + i, &v, 8);
    }
  } else {
    madvise(p, kHuge, 22 /* MADV_POPULATE_READ */);
  }
  return p;
}

// Copies `pages` huge pages from `src` into a fresh registered region; returns
// microseconds per page, or a negative value on failure.
double CopyRun(const uint8_t* src, uint64_t pages, bool check_zero) {
  const uint64_t len = pages * kHuge;
  auto* dst = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_HUGETLB, -1, 0));
  if (dst == MAP_FAILED) return -1;
  UniqueFd uffd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  uffdio_api api{};
  api.api = UFFD_API;
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uint64_t>(dst);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (!uffd || ioctl(uffd.get(), UFFDIO_API, &api) < 0 || ioctl(uffd.get(), UFFDIO_REGISTER, &reg) < 0) {
    munmap(dst, len);
    return -1;
  }
  uint64_t t0 = NowNs();
  for (uint64_t i = 0; i < pages; ++i) {
    uffdio_copy c{};
    c.dst = reinterpret_cast<uint64_t>(dst) + i * kHuge;
    c.src = reinterpret_cast<uint64_t>(src);
    c.len = kHuge;
    if (ioctl(uffd.get(), UFFDIO_COPY, &c) < 0) {
      munmap(dst, len);
      return -1;
    }
  }
  double us = static_cast<double>(NowNs() - t0) / 1e3 / static_cast<double>(pages);
  if (check_zero) {
    for (uint64_t o = 0; o < len; o += 8) {
      uint64_t v;
      memcpy(&v, dst + o, 8);
      if (v != 0) us = -2;
    }
  }
  munmap(dst, len);
  return us;
}

int Main(int argc, char** argv) {
  const uint64_t pages = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  if (pages == 0 || reps <= 0) {
    fprintf(stderr, "usage: fcvm-zero-source-bench [pages=64] [reps=9]\n");
    return 1;
  }
  auto pool = HugePageReservation::Add(pages + 2);
  if (!pool.ok()) {
    fprintf(stderr, "fcvm-zero-source-bench: %s\n", pool.status().ToString().c_str());
    return 2;
  }
  {
    const uint64_t len = (pages + 2) * kHuge;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m != MAP_FAILED) {
      memset(m, 1, len);
      munmap(m, len);
    }
  }
  auto* hugetlb = static_cast<uint8_t*>(
      mmap(nullptr, kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0));
  if (hugetlb == MAP_FAILED) {
    perror("mmap hugetlb source");
    return 2;
  }
  memset(hugetlb, 0, kHuge);
  struct Source {
    const char* name;
    const uint8_t* p;
    bool zero;
    std::vector<double> us;
  };
  std::vector<Source> sources = {{"zeropage-4k", Anonymous(MADV_NOHUGEPAGE, false), true, {}},
                                 {"zeropage-thp", Anonymous(MADV_HUGEPAGE, false), true, {}},
                                 {"memset-4k", Anonymous(MADV_NOHUGEPAGE, true), true, {}},
                                 {"hugetlb-buf", hugetlb, true, {}},
                                 {"data", Anonymous(MADV_NOHUGEPAGE, true, 1), false, {}}};
  for (const Source& s : sources) {
    if (s.p == nullptr) {
      fprintf(stderr, "fcvm-zero-source-bench: cannot map source %s\n", s.name);
      return 2;
    }
  }
  // Interleaved, so that drift on a shared machine hits every source alike.
  for (int r = 0; r < reps; ++r) {
    for (Source& s : sources) {
      double us = CopyRun(s.p, pages, s.zero);
      if (us < 0) {
        fprintf(stderr, "fcvm-zero-source-bench: %s: %s\n", s.name,
                us == -2 ? "copied page is not zero" : strerror(errno));
        return 1;
      }
      s.us.push_back(us);
    }
  }
  // UFFDIO_ZEROPAGE on hugetlbfs, for the record.
  std::string zeropage;
  {
    auto* dst = static_cast<uint8_t*>(mmap(nullptr, kHuge, PROT_READ | PROT_WRITE,
                                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_HUGETLB, -1, 0));
    UniqueFd uffd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    uffdio_api api{};
    api.api = UFFD_API;
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(dst);
    reg.range.len = kHuge;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (dst != MAP_FAILED && uffd && ioctl(uffd.get(), UFFDIO_API, &api) == 0 &&
        ioctl(uffd.get(), UFFDIO_REGISTER, &reg) == 0) {
      uffdio_zeropage z{};
      z.range.start = reinterpret_cast<uint64_t>(dst);
      z.range.len = kHuge;
      int rc = ioctl(uffd.get(), UFFDIO_ZEROPAGE, &z);
      zeropage = rc == 0 ? "works" : absl::StrCat("fails: ", strerror(errno));
      zeropage +=
          (reg.ioctls >> _UFFDIO_ZEROPAGE) & 1 ? " (advertised)" : " (not advertised by UFFDIO_REGISTER)";
    }
    if (dst != MAP_FAILED) munmap(dst, kHuge);
  }
  char load[64] = {};
  if (FILE* f = fopen("/proc/loadavg", "r")) {
    if (fgets(load, sizeof(load), f) == nullptr) load[0] = 0;
    fclose(f);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double base = median(sources.back().us);
  printf("UFFDIO_COPY of one 2 MiB page into hugetlbfs, %lu pages x %d runs, loadavg %.14s\n",
         static_cast<unsigned long>(pages), reps, load);
  printf("UFFDIO_ZEROPAGE on hugetlbfs: %s\n", zeropage.c_str());
  printf("%-14s %12s %10s %10s %10s\n", "source", "us/page", "min", "max", "vs data");
  std::string json = "{";
  for (const Source& s : sources) {
    double m = median(s.us);
    printf("%-14s %12.1f %10.1f %10.1f %10.2f\n", s.name, m, *std::min_element(s.us.begin(), s.us.end()),
           *std::max_element(s.us.begin(), s.us.end()), m / base);
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"", s.name, "_us\":", absl::StrFormat("%.1f", m));
  }
  printf("%s}\n", json.c_str());
  munmap(hugetlb, kHuge);
  return 0;
}

}  // namespace
}  // namespace fcvm::bench

int main(int argc, char** argv) { return fcvm::bench::Main(argc, argv); }
