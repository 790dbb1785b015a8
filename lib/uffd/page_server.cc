#include "lib/uffd/page_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <deque>
#include <latch>
#include <limits>
#include <map>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/file_util.h"
#include "lib/base/hugetlb.h"
#include "lib/base/pidfd.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"
#include "lib/io/event_loop.h"
#include "lib/uffd/handshake.h"
#include "spdlog/spdlog.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older C library headers lack it
#endif

namespace fcvm::uffd {
namespace {

constexpr size_t kMsgBatch = 64;                     // uffd_msg per read(2)
constexpr uint64_t kMaxIoctlBytes = 2 << 20;         // bytes per UFFDIO_COPY / ZEROPAGE (at least a page)
constexpr uint64_t kPrefetchSliceBytes = 1 << 20;    // prefetch work between two event checks
constexpr uint64_t kPrefetchChunkBytes = 512 << 10;  // unit of prefetch work shared between loops
constexpr uint64_t kNoPage = std::numeric_limits<uint64_t>::max();
// EEXIST answers to refaults, with nothing installed in between, after which
// a session gives up (see Session::InstallRun).
constexpr uint32_t kMaxRefusedRefaults = 64;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// One UFFDIO_ZEROPAGE (`src` null) or UFFDIO_COPY of `len` bytes at `dst`.
// Returns the bytes installed and, when that is short of `len`, the errno
// that stopped it (the kernel reports partial progress with a negated error).
struct IoctlResult {
  uint64_t bytes = 0;
  int err = 0;
};
IoctlResult InstallIoctl(int uffd, uint64_t dst, const uint8_t* src, uint64_t len) {
  int64_t done;
  int rc;
  if (src == nullptr) {
    uffdio_zeropage z{};
    z.range.start = dst;
    z.range.len = len;
    rc = ::ioctl(uffd, UFFDIO_ZEROPAGE, &z);
    done = z.zeropage;
  } else {
    uffdio_copy c{};
    c.dst = dst;
    c.src = reinterpret_cast<uint64_t>(src);
    c.len = len;
    rc = ::ioctl(uffd, UFFDIO_COPY, &c);
    done = c.copy;
  }
  if (rc == 0) return {len, 0};
  int err = errno;
  if (done < 0) return {0, static_cast<int>(-done)};
  return {static_cast<uint64_t>(done), err};
}

// kMaxPageSize bytes of zeros to UFFDIO_COPY from where UFFDIO_ZEROPAGE does
// not exist (hugetlbfs). A read-only anonymous mapping that is never written:
// populated by reading, every 4 KiB of it maps the kernel's one shared zero
// page, so it costs no memory and a 2 MiB copy reads the same cache-hot 4 KiB
// 512 times (MADV_NOHUGEPAGE keeps the huge zero page out: 2 MiB of source).
// Measured against a memset 2 MiB buffer and a hugetlb one in
// docs/page-server.md. Made once per process, never unmapped; null when the
// mapping failed.
const uint8_t* ZeroSource() {
  static const uint8_t* const zero = []() -> const uint8_t* {
    void* m = ::mmap(nullptr, kMaxPageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      spdlog::error("page server: cannot map the zero source for huge pages: {}", strerror(errno));
      return nullptr;
    }
    (void)::madvise(m, kMaxPageSize, MADV_NOHUGEPAGE);
    (void)::madvise(m, kMaxPageSize, MADV_POPULATE_READ);  // else mapped by the first copy
    return static_cast<const uint8_t*>(m);
  }();
  return zero;
}

// Where a guest of `page_size` pages over a snapshot of `unit` pages gets its
// zero pages: null (UFFDIO_ZEROPAGE) for base pages, else the shared zero
// mapping. InvalidArgument for a page size not served.
absl::StatusOr<const uint8_t*> ZeroSourceFor(uint64_t page_size, uint64_t unit) {
  if (page_size < unit || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page size ", page_size, " is not served (from the host's ", unit, " to ", kMaxPageSize, " bytes)"));
  }
  if (page_size == unit) return nullptr;
  const uint8_t* zero = ZeroSource();
  if (zero == nullptr)
    return absl::InternalError("page size > base page: no zero source to copy zero pages from");
  return zero;
}

absl::Status SetNonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return ErrnoError("fcntl F_GETFL userfaultfd");
  if ((fl & O_NONBLOCK) == 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl F_SETFL O_NONBLOCK userfaultfd");
  }
  return absl::OkStatus();
}

// A listener's fault-around block: 0, or a power of two up to 64 MiB.
absl::Status CheckFaultAround(uint64_t bytes) {
  if (bytes > (64u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("fault_around_bytes ", bytes, " is larger than 64 MiB"));
  }
  if (bytes != 0 && (bytes & (bytes - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fault_around_bytes ", bytes, " is not a power of two"));
  }
  return absl::OkStatus();
}

const char* IoctlName(const uint8_t* src, const uint8_t* zero_src) {
  if (src == nullptr) return "UFFDIO_ZEROPAGE";
  return src == zero_src ? "UFFDIO_COPY (zeros)" : "UFFDIO_COPY";
}

bool TestBit(const std::vector<uint64_t>& b, uint64_t i) { return (b[i >> 6] >> (i & 63)) & 1; }
void SetBit(std::vector<uint64_t>& b, uint64_t i) { b[i >> 6] |= 1ull << (i & 63); }
void ClearBit(std::vector<uint64_t>& b, uint64_t i) { b[i >> 6] &= ~(1ull << (i & 63)); }

}  // namespace

const char* SessionEventKindName(SessionEventKind kind) {
  switch (kind) {
    case SessionEventKind::kReady:
      return "ready";
    case SessionEventKind::kRejected:
      return "rejected";
    case SessionEventKind::kPrefetchDone:
      return "prefetch-done";
    case SessionEventKind::kFailed:
      return "failed";
    case SessionEventKind::kClosed:
      return "closed";
  }
  return "?";
}

// Control-plane state of one listener, shared by its loop-side Listener, its
// sessions (on any loop) and the API methods. Only session setup/teardown and
// the API lock `mu`; faults never do.
struct ListenerShared {
  ListenerId id = 0;
  ListenerSpec spec;
  std::shared_ptr<SnapshotMemory> snap;
  size_t home = 0;
  std::atomic<uint32_t> accepted{0};

  absl::Mutex mu;
  absl::CondVar cv;
  struct Live {
    SessionId id;
    pid_t pid;
    std::shared_ptr<AtomicPageStats> stats;
    uint64_t page_size = 0;  // set once the handshake is taken
  };
  std::vector<Live> live ABSL_GUARDED_BY(mu);
  PageStats closed ABSL_GUARDED_BY(mu);
  uint32_t prefetch_pending ABSL_GUARDED_BY(mu) = 0;  // handshaken, prefetch not finished
  uint32_t done_ok ABSL_GUARDED_BY(mu) = 0;           // reached "prefetch done"
  absl::Status last_failure ABSL_GUARDED_BY(mu);
  bool removed ABSL_GUARDED_BY(mu) = false;
  // The snapshot's recording claim, taken when AddListener resolved kAuto to
  // kRecord; handed to the first session, released here if none took it.
  std::atomic<bool> holds_recording{false};

  ~ListenerShared() {
    if (holds_recording.exchange(false)) snap->ReleaseRecording();
  }
};

struct LoopCtx;
class Session;

class Listener {
 public:
  Listener(LoopCtx* loop, std::shared_ptr<ListenerShared> shared, UniqueFd fd)
      : loop_(loop), shared_(std::move(shared)), fd_(std::move(fd)) {}
  ~Listener() { Close(); }
  void Start();
  void Close();

 private:
  void OnAccept(int32_t res);
  LoopCtx* loop_;
  std::shared_ptr<ListenerShared> shared_;
  UniqueFd fd_;
  io::OpId accept_op_ = 0;
};

struct PageServer::Impl {
  PageServerOptions options;
  std::vector<std::unique_ptr<LoopCtx>> loops;
  SnapshotRegistry registry;
  std::atomic<uint64_t> next_listener{1};
  std::atomic<uint64_t> next_session{1};
  std::atomic<uint64_t> round_robin{0};

  absl::Mutex mu;
  std::unordered_map<ListenerId, std::shared_ptr<ListenerShared>> listeners ABSL_GUARDED_BY(mu);
  std::map<std::string, PageStats> retired ABSL_GUARDED_BY(mu);  // by memory file
  bool stopped ABSL_GUARDED_BY(mu) = false;

  absl::Mutex cb_mu;
  std::shared_ptr<std::function<void(const SessionEvent&)>> callback ABSL_GUARDED_BY(cb_mu);

  // Working-set files are written off the loop threads (fsync).
  absl::Mutex wmu;
  std::deque<std::pair<std::string, std::string>> writes ABSL_GUARDED_BY(wmu);
  bool writing ABSL_GUARDED_BY(wmu) = false;
  bool writer_stop ABSL_GUARDED_BY(wmu) = false;
  std::thread writer;

  void Emit(const SessionEvent& event) {
    std::shared_ptr<std::function<void(const SessionEvent&)>> cb;
    {
      absl::MutexLock lock(&cb_mu);
      cb = callback;
    }
    if (cb && *cb) (*cb)(event);
  }
  void QueueWrite(std::string path, std::string contents) {
    absl::MutexLock lock(&wmu);
    writes.emplace_back(std::move(path), std::move(contents));
  }
  void FlushWrites() {
    absl::MutexLock lock(&wmu);
    wmu.Await(absl::Condition(
        +[](Impl* self)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->wmu) { return self->writes.empty() && !self->writing; },
        this));
  }
  void WriterMain();
  absl::Status Remove(ListenerId id, bool leave_peers);
  size_t PickLoop() { return round_robin.fetch_add(1) % loops.size(); }
};

void PageServer::Impl::WriterMain() {
  while (true) {
    std::pair<std::string, std::string> item;
    {
      absl::MutexLock lock(&wmu);
      wmu.Await(absl::Condition(
          +[](Impl* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->wmu) {
            return !self->writes.empty() || self->writer_stop;
          },
          this));
      if (writes.empty()) return;
      item = std::move(writes.front());
      writes.pop_front();
      writing = true;
    }
    absl::Status st = WriteFileAtomic(item.first, item.second);
    if (!st.ok()) {
      spdlog::warn("page server: cannot write working set: {}", st.ToString());
    } else {
      spdlog::info("page server: wrote working set {} ({} bytes)", item.first, item.second.size());
    }
    absl::MutexLock lock(&wmu);
    writing = false;
  }
}

// A prefetch spread over several loop threads (ListenerSpec::
// paused_during_prefetch). The plan is cut into chunks; the session's own
// loop and one helper on every other loop claim chunks through `next` until
// none is left, so a busy loop simply takes fewer. Helpers do not touch the
// session (its bitmaps and counters belong to its loop): they report what
// they installed, and what they could not (EAGAIN), when they run out.
struct PrefetchShare {
  struct Chunk {
    size_t region;
    uint64_t begin, count;  // file pages
  };
  std::vector<Chunk> chunks;  // immutable once helpers run
  std::atomic<size_t> next{0};
  std::atomic<bool> cancelled{false};
  // Read-only for helpers:
  UniqueFd uffd;  // a duplicate of the session's: it stays valid whatever the session does
  std::shared_ptr<SnapshotMemory> snap;
  std::vector<GuestRegion> regions;
  uint64_t ps = 0;                    // the guest's page size; chunks are in these pages
  uint64_t ratio = 1;                 // snapshot units per page
  const uint8_t* zero_src = nullptr;  // zero pages: null = UFFDIO_ZEROPAGE, else copied from here
  bool zero_elision = true;
  LoopCtx* owner = nullptr;
  SessionId session = 0;
};

struct HelperReport {
  std::vector<PrefetchShare::Chunk> installed, left;  // left: hit EAGAIN, for the session to retry
  uint64_t copied = 0, zero = 0;                      // guest pages
  uint64_t eexist = 0, eagain = 0, ioctls = 0;
  bool gone = false;   // the peer's address space is gone (ESRCH)
  absl::Status error;  // a copy failed for good
};

struct HelperJob {
  std::shared_ptr<PrefetchShare> share;
  HelperReport report;
};

// Everything one loop thread owns. Touched only on that thread (after setup).
struct LoopCtx {
  PageServer::Impl* server = nullptr;
  size_t index = 0;
  std::unique_ptr<io::EventLoop> ev;
  std::unordered_map<ListenerId, std::unique_ptr<Listener>> listeners;
  std::unordered_map<SessionId, std::unique_ptr<Session>> sessions;
  std::vector<std::unique_ptr<Session>> graveyard;  // closed this iteration
  std::vector<SessionId> busy;                      // sessions with prefetch/retry work
  std::vector<std::unique_ptr<HelperJob>> helping;  // other loops' prefetches this loop helps with

  void AddSession(std::shared_ptr<ListenerShared> ls, SessionId id, UniqueFd sock);
  void AddAdopted(std::shared_ptr<ListenerShared> ls, SessionId id, Handshake hs, UniqueFd uffd,
                  UniqueFd pidfd, pid_t pid);
  bool BusyHook();
  // Runs one slice of a helper job; false when the job is over (reported).
  bool HelpSlice(HelperJob& job);
  void CloseListenerSessions(ListenerId id, const absl::Status& why, bool leave_peers);
  void Shutdown();
  ~LoopCtx();
};

class Session {
 public:
  Session(LoopCtx* loop, std::shared_ptr<ListenerShared> ls, SessionId id, UniqueFd sock)
      : loop_(loop),
        ls_(std::move(ls)),
        id_(id),
        sock_(std::move(sock)),
        stats_(std::make_shared<AtomicPageStats>()) {}

  void Start();
  // Starts a session taken over from another server (AdoptSession): ready at
  // once, no socket; wakes the peer's threads waiting on faults.
  void StartAdopted(Handshake hs, UniqueFd uffd, UniqueFd pidfd, pid_t pid);
  // Returns true while the session has more background work.
  bool Tick();
  // Ends the session: cancels its operations, maybe kills the peer, reports,
  // and moves it to the loop's graveyard (destroyed after the current
  // iteration, never under our own feet). Idempotent.
  void Close(SessionEventKind kind, absl::Status why, bool kill);
  // A helper loop finished its part of this session's prefetch.
  void OnHelperDone(HelperReport report);
  ListenerId listener_id() const { return ls_->id; }
  const ListenerSpec& spec() const { return ls_->spec; }

 private:
  enum class Kind { kData, kZero };
  enum class Outcome { kDone, kRetry, kGone, kError };
  struct Result {
    Outcome outcome = Outcome::kDone;
    uint64_t resume = 0;  // first page not installed (kRetry)
    absl::Status error;
  };
  struct Fault {
    uint64_t addr;
    bool was_present;
    uint64_t t0;
  };
  struct Retry {
    size_t region;
    uint64_t begin, end;  // file pages
    uint64_t force;       // page to install even if marked present
    bool is_fault;        // a faulting page: its latency is recorded when done
    uint64_t t0;
    bool prefetch;  // counts as prefetched
  };
  void OnHandshakeReadable(int32_t res);
  absl::Status TakeHandshake();
  void BecomeReady();
  void OnSocketEvent(int32_t revents);
  // Reads every pending event and resolves the faults among them.
  void ServeEvents(uint64_t t0);
  absl::Status Drain(uint64_t t0);
  void ResolveFaults();
  void HandleResult(const Result& r, size_t region, uint64_t end, uint64_t force, bool is_fault, uint64_t t0,
                    bool prefetch = false);
  Result InstallRange(size_t region, uint64_t begin, uint64_t end, uint64_t force, bool prefetch);
  Result InstallRun(size_t region, uint64_t page, uint64_t count, Kind kind, bool prefetch, uint64_t force);
  // Pages here are the guest's (ps_ bytes); the snapshot counts in units of
  // ratio_ per page.
  Kind KindOf(uint64_t page) const {
    if (TestBit(removed_, page)) return Kind::kZero;
    if (ls_->spec.zero_elision && ls_->snap->IsZeroRange(page * ratio_, ratio_)) return Kind::kZero;
    return Kind::kData;
  }
  // Where a run of `kind` pages is copied from (null: UFFDIO_ZEROPAGE).
  const uint8_t* SourceOf(Kind kind, uint64_t page) const {
    return kind == Kind::kData ? ls_->snap->data() + page * ps_ : zero_src_;
  }
  // Counts installed pages (in snapshot units, see stats.h).
  void CountInstalled(bool zero, uint64_t pages, bool prefetch);
  absl::Status RefusedRefaultsError(uint64_t dst) const;
  bool Present(uint64_t page) const { return TestBit(present_, page); }
  // Region holding address `addr`, or -1.
  int RegionOfAddr(uint64_t addr) const;
  int RegionOfPage(uint64_t page) const;
  uint64_t PageOf(size_t region, uint64_t addr) const {
    const GuestRegion& r = hs_.regions[region];
    return (r.offset + (addr - r.base_host_virt_addr)) / ps_;
  }
  uint64_t AddrOf(size_t region, uint64_t page) const {
    const GuestRegion& r = hs_.regions[region];
    return r.base_host_virt_addr + page * ps_ - r.offset;
  }
  uint64_t RegionFirst(size_t region) const { return hs_.regions[region].offset / ps_; }
  uint64_t RegionEnd(size_t region) const {
    return (hs_.regions[region].offset + hs_.regions[region].size) / ps_;
  }
  void Fail(absl::Status why) { Close(SessionEventKind::kFailed, std::move(why), Kill()); }
  bool Kill() const { return ls_->spec.on_failure == FailurePolicy::kKill; }
  void MarkBusy();
  void BuildPrefetchPlan();
  void PrefetchDone();
  void FinishRecording();
  SessionEvent MakeEvent(SessionEventKind kind, absl::Status status) const;

  LoopCtx* loop_;
  std::shared_ptr<ListenerShared> ls_;
  SessionId id_;
  UniqueFd sock_, uffd_, pidfd_;
  pid_t pid_ = 0;
  bool closed_ = false;
  bool ready_ = false;
  bool adopted_ = false;
  std::string raw_hs_;  // the handshake's bytes, when spec.handshake_copy_path asks for a copy
  io::OpId hs_poll_ = 0, hs_timer_ = 0, uffd_poll_ = 0, sock_poll_ = 0, pid_poll_ = 0;

  Handshake hs_;
  uint64_t ps_ = 0;                    // the guest's page size (bytes); every page index below is in these
  uint64_t ratio_ = 1;                 // snapshot units per guest page (512 for 2 MiB pages on x86_64)
  const uint8_t* zero_src_ = nullptr;  // zero pages: null = UFFDIO_ZEROPAGE, else UFFDIO_COPY from here
  std::vector<uint64_t> present_, removed_, recorded_;
  ClonePolicy mode_ = ClonePolicy::kNone;
  bool claimed_recording_ = false;
  bool recording_ = false;
  io::OpId rec_timer_ = 0;
  std::vector<uint64_t> record_;
  std::shared_ptr<PrefetchShare> share_;  // the prefetch plan, in chunks claimed by us and helpers
  bool chunk_active_ = false;             // `chunk_` claimed and not finished
  PrefetchShare::Chunk chunk_{};
  uint64_t chunk_off_ = 0;
  bool chunks_exhausted_ = false;  // no chunk left to claim
  int helpers_out_ = 0;            // helper jobs that have not reported yet
  bool prefetching_ = false;
  bool in_busy_ = false;
  std::vector<Fault> faults_;
  std::vector<Retry> retries_;
  std::vector<Retry> around_;  // fault-around remainders, installed after this batch's faults
  std::shared_ptr<AtomicPageStats> stats_;
  uint64_t block_pages_ = 1;
  uint64_t start_ns_ = 0, ready_ns_ = 0;  // accepted; handshake taken (for the log lines)
  uint64_t ioctls_ = 0;                   // UFFDIO_COPY/ZEROPAGE calls (for the log lines)
  uint32_t refused_refaults_ = 0;         // EEXIST on refaulting pages since the last page installed
};

// ---------------------------------------------------------------- Listener

void Listener::Start() {
  accept_op_ = loop_->ev->AcceptMultishot(fd_.get(), [this](int32_t res, uint32_t) { OnAccept(res); });
}

void Listener::Close() {
  if (!fd_) return;
  if (accept_op_ != 0) loop_->ev->Cancel(accept_op_);
  accept_op_ = 0;
  fd_.Reset();
  ::unlink(shared_->spec.socket_path.c_str());
}

void Listener::OnAccept(int32_t res) {
  if (res < 0) {
    spdlog::error("page server: accept on {}: {}", shared_->spec.socket_path, strerror(-res));
    accept_op_ = 0;
    return;
  }
  UniqueFd conn(res);
  const uint32_t max = shared_->spec.max_connections;
  uint32_t n = shared_->accepted.fetch_add(1) + 1;
  if (max != 0 && n > max) {
    spdlog::warn("page server: {}: connection beyond max_connections={} refused", shared_->spec.socket_path,
                 max);
    return;
  }
  PageServer::Impl* server = loop_->server;
  SessionId sid = server->next_session.fetch_add(1);
  size_t target = max == 1 ? loop_->index : server->PickLoop();
  std::shared_ptr<ListenerShared> ls = shared_;
  if (max != 0 && n == max) Close();  // all expected peers are here: the socket goes away
  if (target == loop_->index) {
    loop_->AddSession(std::move(ls), sid, std::move(conn));
    return;
  }
  LoopCtx* dst = server->loops[target].get();
  auto fd = std::make_shared<UniqueFd>(std::move(conn));
  dst->ev->Post([dst, ls, sid, fd] { dst->AddSession(ls, sid, std::move(*fd)); });
}

// ---------------------------------------------------------------- LoopCtx

void LoopCtx::AddSession(std::shared_ptr<ListenerShared> ls, SessionId id, UniqueFd sock) {
  {
    absl::MutexLock lock(&ls->mu);
    if (ls->removed) return;  // raced with RemoveListener: drop the connection
  }
  auto session = std::make_unique<Session>(this, std::move(ls), id, std::move(sock));
  Session* raw = session.get();
  sessions.emplace(id, std::move(session));
  raw->Start();
}

void LoopCtx::AddAdopted(std::shared_ptr<ListenerShared> ls, SessionId id, Handshake hs, UniqueFd uffd,
                         UniqueFd pidfd, pid_t pid) {
  {
    absl::MutexLock lock(&ls->mu);
    if (ls->removed) return;
  }
  auto session = std::make_unique<Session>(this, std::move(ls), id, UniqueFd());
  Session* raw = session.get();
  sessions.emplace(id, std::move(session));
  raw->StartAdopted(std::move(hs), std::move(uffd), std::move(pidfd), pid);
}

bool LoopCtx::BusyHook() {
  graveyard.clear();
  bool more = false;
  size_t keep = 0;
  // Tick may add to `busy` (another session) or close sessions: index loop.
  for (size_t i = 0; i < busy.size(); ++i) {
    SessionId id = busy[i];
    auto it = sessions.find(id);
    if (it == sessions.end()) continue;
    if (it->second->Tick()) {
      busy[keep++] = id;
      more = true;
    }
  }
  busy.resize(keep);
  graveyard.clear();
  for (size_t i = 0; i < helping.size();) {
    if (HelpSlice(*helping[i])) {
      more = true;
      ++i;
    } else {
      helping.erase(helping.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  return more;
}

namespace {

// Installs one chunk of another loop's prefetch (see PrefetchShare). Stops at
// the first EAGAIN (the rest is reported as left), ESRCH or error.
void HelperInstall(const PrefetchShare& sh, const PrefetchShare::Chunk& c, HelperReport* rep) {
  const GuestRegion& g = sh.regions[c.region];
  const uint64_t end = c.begin + c.count;
  const uint64_t max_pages = std::max<uint64_t>(1, kMaxIoctlBytes / sh.ps);
  auto is_zero = [&sh](uint64_t page) {
    return sh.zero_elision && sh.snap->IsZeroRange(page * sh.ratio, sh.ratio);
  };
  uint64_t p = c.begin;
  auto installed = [&] {
    if (p == c.begin) return;
    if (!rep->installed.empty() && rep->installed.back().region == c.region &&
        rep->installed.back().begin + rep->installed.back().count == c.begin) {
      rep->installed.back().count += p - c.begin;
    } else {
      rep->installed.push_back({c.region, c.begin, p - c.begin});
    }
  };
  while (p < end) {
    const bool zero = is_zero(p);
    uint64_t q = p + 1;
    while (q < end && q - p < max_pages && is_zero(q) == zero) ++q;
    const uint64_t dst = g.base_host_virt_addr + p * sh.ps - g.offset;
    const uint64_t len = (q - p) * sh.ps;
    ++rep->ioctls;
    const uint8_t* src = zero ? sh.zero_src : sh.snap->data() + p * sh.ps;
    const IoctlResult r = InstallIoctl(sh.uffd.get(), dst, src, len);
    const int err = r.err;
    const uint64_t pages_done = r.bytes / sh.ps;
    (zero ? rep->zero : rep->copied) += pages_done;
    p += pages_done;
    if (err == 0 || pages_done > 0) continue;
    switch (err) {
      case EEXIST:  // installed by the session's own fault path: fine
        ++rep->eexist;
        ++p;
        continue;
      case EAGAIN:
        ++rep->eagain;
        installed();
        rep->left.push_back({c.region, p, end - p});
        return;
      case ESRCH:
        rep->gone = true;
        installed();
        return;
      default:
        rep->error = ErrnoError(err, absl::StrFormat("ioctl %s [0x%x+%d] (prefetch helper)",
                                                     IoctlName(src, sh.zero_src), dst, len));
        installed();
        return;
    }
  }
  installed();
}

}  // namespace

bool LoopCtx::HelpSlice(HelperJob& job) {
  PrefetchShare& sh = *job.share;
  HelperReport& rep = job.report;
  uint64_t budget = std::max<uint64_t>(1, kPrefetchSliceBytes / sh.ps);
  while (budget > 0) {
    if (sh.cancelled.load(std::memory_order_relaxed) || rep.gone || !rep.error.ok() || !rep.left.empty())
      break;
    size_t i = sh.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= sh.chunks.size()) break;
    HelperInstall(sh, sh.chunks[i], &rep);
    budget -= std::min(budget, sh.chunks[i].count);
  }
  if (budget == 0) return true;  // more next iteration (other work of this loop first)
  LoopCtx* owner = sh.owner;
  SessionId sid = sh.session;
  auto report = std::make_shared<HelperReport>(std::move(rep));
  owner->ev->Post([owner, sid, report] {
    auto it = owner->sessions.find(sid);
    if (it != owner->sessions.end()) it->second->OnHelperDone(std::move(*report));
  });
  return false;
}

void LoopCtx::CloseListenerSessions(ListenerId id, const absl::Status& why, bool leave_peers) {
  std::vector<Session*> victims;
  for (auto& [sid, s] : sessions) {
    if (s->listener_id() == id) victims.push_back(s.get());
  }
  for (Session* s : victims) {
    s->Close(SessionEventKind::kClosed, why, !leave_peers && s->spec().on_failure == FailurePolicy::kKill);
  }
  graveyard.clear();
}

void LoopCtx::Shutdown() {
  listeners.clear();
  std::vector<Session*> all;
  for (auto& [sid, s] : sessions) all.push_back(s.get());
  for (Session* s : all) {
    s->Close(SessionEventKind::kClosed, absl::CancelledError("page server stopped"),
             s->spec().on_failure == FailurePolicy::kKill);
  }
  graveyard.clear();
}

LoopCtx::~LoopCtx() {
  // The thread is joined: no handler can run any more.
  listeners.clear();
  sessions.clear();
  graveyard.clear();
}

// ---------------------------------------------------------------- Session

SessionEvent Session::MakeEvent(SessionEventKind kind, absl::Status status) const {
  SessionEvent e{kind};
  e.listener = ls_->id;
  e.session = id_;
  e.tag = ls_->spec.tag;
  e.peer_pid = pid_;
  e.status = std::move(status);
  e.policy = mode_;
  e.regions = static_cast<uint32_t>(hs_.regions.size());
  e.page_size = ps_;
  return e;
}

void Session::Start() {
  start_ns_ = NowNs();
  auto creds = GetPeerCredentials(sock_.get());
  if (creds.ok()) pid_ = creds->pid;
  auto pidfd = GetPeerPidfd(sock_.get());
  if (pidfd.ok()) {
    pidfd_ = std::move(*pidfd);
  } else {
    spdlog::warn("page server: session {}: no pidfd for the peer: {}", id_, pidfd.status().ToString());
  }
  {
    absl::MutexLock lock(&ls_->mu);
    ls_->live.push_back({id_, pid_, stats_});
  }
  hs_poll_ = loop_->ev->PollOnce(sock_.get(), POLLIN | POLLRDHUP, [this](int32_t res, uint32_t) {
    hs_poll_ = 0;
    OnHandshakeReadable(res);
  });
  hs_timer_ = loop_->ev->Timeout(ls_->spec.handshake_timeout, [this](int32_t, uint32_t) {
    hs_timer_ = 0;
    Close(SessionEventKind::kRejected,
          absl::DeadlineExceededError(absl::StrCat("bad handshake: nothing received within ",
                                                   absl::FormatDuration(ls_->spec.handshake_timeout))),
          Kill());
  });
}

void Session::StartAdopted(Handshake hs, UniqueFd uffd, UniqueFd pidfd, pid_t pid) {
  start_ns_ = NowNs();
  adopted_ = true;
  pid_ = pid;
  pidfd_ = std::move(pidfd);
  hs_ = std::move(hs);
  uffd_ = std::move(uffd);
  ps_ = hs_.page_size;
  ratio_ = ps_ / ls_->snap->page_size();
  zero_src_ = ZeroSourceFor(ps_, ls_->snap->page_size()).value_or(nullptr);  // checked by AdoptSession
  {
    absl::MutexLock lock(&ls_->mu);
    ls_->live.push_back({id_, pid_, stats_});
  }
  BecomeReady();
  if (closed_) return;
  // Threads of the peer may wait on faults the previous server read and never
  // resolved: woken, they fault again (to us) or find their page there.
  for (const GuestRegion& r : hs_.regions) {
    uffdio_range range{.start = r.base_host_virt_addr, .len = r.size};
    if (ioctl(uffd_.get(), UFFDIO_WAKE, &range) < 0) {
      Fail(ErrnoError(absl::StrFormat("UFFDIO_WAKE %#x+%#x", r.base_host_virt_addr, r.size)));
      return;
    }
  }
  // Faults queued while nobody served are read now.
  ServeEvents(NowNs());
}

void Session::OnHandshakeReadable(int32_t res) {
  if (closed_) return;
  if (res < 0) {
    Close(SessionEventKind::kRejected, ErrnoError(-res, "poll handshake socket"), Kill());
    return;
  }
  absl::Status st = TakeHandshake();
  if (closed_) return;
  if (absl::IsUnavailable(st) && st.message() == "again") {
    hs_poll_ = loop_->ev->PollOnce(sock_.get(), POLLIN | POLLRDHUP, [this](int32_t r, uint32_t) {
      hs_poll_ = 0;
      OnHandshakeReadable(r);
    });
    return;
  }
  if (!st.ok()) {
    Close(SessionEventKind::kRejected, st, Kill());
    return;
  }
  BecomeReady();
}

absl::Status Session::TakeHandshake() {
  std::vector<char> buf(kHandshakeBufferSize);
  size_t total = 0;
  std::vector<UniqueFd> fds;
  bool ctrunc = false;
  // Firecracker sends one sendmsg, but the kernel may cut a large one into
  // several socket buffers and recvmsg stops after the one carrying the fd:
  // take everything already there (never wait for more).
  while (total < buf.size()) {
    // Room for two fds, so that "two fds" is reported as such rather than as
    // a truncation.
    auto msg =
        RecvWithFds(sock_.get(), absl::MakeSpan(buf.data() + total, buf.size() - total), 2, MSG_DONTWAIT);
    if (!msg.ok()) {
      bool again = msg.status().message().find(strerror(EAGAIN)) != absl::string_view::npos;
      if (again && (total > 0 || !fds.empty())) break;
      if (again) return absl::UnavailableError("again");
      return Annotate(msg.status(), "bad handshake");
    }
    ctrunc = ctrunc || msg->control_truncated;
    for (auto& fd : msg->fds) fds.push_back(std::move(fd));
    if (msg->bytes == 0) break;  // peer closed
    total += msg->bytes;
  }
  if (total == 0 && fds.empty()) {
    return absl::UnavailableError("bad handshake: peer closed the connection before sending the handshake");
  }
  HandshakeMessage hm{absl::string_view(buf.data(), total), fds.size(), ctrunc, total >= buf.size()};
  ASSIGN_OR_RETURN(Handshake hs, ParseHandshake(hm, ls_->snap->size()));
  RETURN_IF_ERROR(CheckIsUserfaultfd(fds[0].get()));
  const uint64_t unit = ls_->snap->page_size();
  absl::StatusOr<const uint8_t*> zero_src = ZeroSourceFor(hs.page_size, unit);
  if (!zero_src.ok()) return Annotate(zero_src.status(), "bad handshake");
  UniqueFd uffd = std::move(fds[0]);
  if (!ls_->spec.handshake_copy_path.empty()) raw_hs_.assign(buf.data(), total);
  RETURN_IF_ERROR(SetNonblocking(uffd.get()));
  uffd_ = std::move(uffd);
  hs_ = std::move(hs);
  ps_ = hs_.page_size;
  ratio_ = ps_ / unit;
  zero_src_ = *zero_src;
  return absl::OkStatus();
}

void Session::BecomeReady() {
  ready_ns_ = NowNs();
  if (hs_timer_ != 0) loop_->ev->Cancel(hs_timer_);
  hs_timer_ = 0;
  // Guest pages over the file (the regions cover whole pages of it).
  const uint64_t pages = (ls_->snap->size() + ps_ - 1) / ps_;
  present_.assign((pages + 63) / 64, 0);
  removed_.assign((pages + 63) / 64, 0);
  uint64_t fab = ls_->spec.fault_around_bytes;
  block_pages_ = fab > ps_ ? fab / ps_ : 1;

  // Resolve the working-set policy.
  mode_ = ls_->spec.policy;
  auto ws = ls_->snap->working_set();
  if (mode_ == ClonePolicy::kAuto) {
    if (ws && !ws->empty()) {
      mode_ = ClonePolicy::kPrefetch;
    } else if (ls_->snap->TryClaimRecording()) {
      mode_ = ClonePolicy::kRecord;
      claimed_recording_ = true;
    } else {
      mode_ = ClonePolicy::kNone;
    }
  } else if (mode_ == ClonePolicy::kRecord) {
    claimed_recording_ = ls_->holds_recording.exchange(false) || ls_->snap->TryClaimRecording();
  }
  if (mode_ == ClonePolicy::kRecord) {
    recorded_.assign((pages + 63) / 64, 0);
    recording_ = true;
    if (ls_->spec.record_for != absl::InfiniteDuration()) {
      rec_timer_ = loop_->ev->Timeout(ls_->spec.record_for, [this](int32_t, uint32_t) {
        rec_timer_ = 0;
        FinishRecording();
      });
    }
  }

  ready_ = true;
  uffd_poll_ = loop_->ev->PollMultishot(uffd_.get(), POLLIN, [this](int32_t res, uint32_t) {
    if (res < 0) {
      Fail(ErrnoError(-res, "poll userfaultfd"));
      return;
    }
    ServeEvents(NowNs());
  });
  if (sock_) {
    sock_poll_ = loop_->ev->PollMultishot(sock_.get(), POLLIN | POLLRDHUP,
                                          [this](int32_t res, uint32_t) { OnSocketEvent(res); });
  }
  if (!raw_hs_.empty()) {
    // Small and rare (once per clone): written here so that it is there
    // before the peer's guest runs. Not fsynced: it is read by a successor
    // fcvmd after a crash or restart of this one (the page cache survives
    // those), never after a host crash (which takes the clone with it), and
    // an fsync here would stall this loop's faults for milliseconds.
    if (absl::Status st = WriteFileAtomic(ls_->spec.handshake_copy_path, raw_hs_, 0600, /*durable=*/false);
        !st.ok()) {
      spdlog::warn("page server: session {} ({}): copy of the handshake: {}", id_, ls_->spec.tag,
                   st.ToString());
    }
    raw_hs_.clear();
  }
  if (pidfd_) {
    pid_poll_ = loop_->ev->PollOnce(pidfd_.get(), POLLIN, [this](int32_t, uint32_t) {
      pid_poll_ = 0;
      Close(SessionEventKind::kClosed, absl::UnavailableError("peer process exited"), false);
    });
  }
  if (mode_ == ClonePolicy::kPrefetch) BuildPrefetchPlan();
  {
    absl::MutexLock lock(&ls_->mu);
    for (ListenerShared::Live& l : ls_->live) {
      if (l.id == id_) l.page_size = ps_;
    }
    if (prefetching_) {
      ++ls_->prefetch_pending;
    } else {
      ++ls_->done_ok;
    }
    ls_->cv.SignalAll();
  }
  spdlog::info("page server: session {} ({}) ready: peer pid {}, {} region(s) of {} KiB pages, policy {}{}",
               id_, ls_->spec.tag, pid_, hs_.regions.size(), ps_ >> 10, ClonePolicyName(mode_),
               prefetching_ ? absl::StrCat(", prefetching ", share_->chunks.size(), " chunks with ",
                                           helpers_out_ + 1, " thread(s)")
                            : "");
  loop_->server->Emit(MakeEvent(SessionEventKind::kReady, absl::OkStatus()));
  if (prefetching_) MarkBusy();
}

void Session::BuildPrefetchPlan() {
  // The snapshot's plan (computed once for all its clones, in snapshot
  // units), widened to whole guest pages, clipped to this clone's regions
  // and cut into chunks.
  auto plan = ls_->snap->prefetch_plan();
  if (!plan) return;
  std::vector<SnapshotMemory::Run> runs;  // guest pages
  for (const SnapshotMemory::Run& u : *plan) {
    const uint64_t lo = u.begin / ratio_, hi = (u.begin + u.count + ratio_ - 1) / ratio_;
    if (!runs.empty() && runs.back().begin + runs.back().count >= lo) {
      runs.back().count = std::max(runs.back().count, hi - runs.back().begin);
    } else {
      runs.push_back({lo, hi - lo});
    }
  }
  auto share = std::make_shared<PrefetchShare>();
  const uint64_t chunk_pages = std::max<uint64_t>(1, kPrefetchChunkBytes / ps_);
  for (const SnapshotMemory::Run& run : runs) {
    for (size_t r = 0; r < hs_.regions.size(); ++r) {
      uint64_t lo = std::max(run.begin, RegionFirst(r));
      uint64_t hi = std::min(run.begin + run.count, RegionEnd(r));
      for (uint64_t p = lo; p < hi; p += chunk_pages) {
        share->chunks.push_back({r, p, std::min(chunk_pages, hi - p)});
      }
    }
  }
  if (share->chunks.empty()) return;
  share_ = std::move(share);
  prefetching_ = true;
  const auto& loops = loop_->server->loops;
  if (!ls_->spec.paused_during_prefetch || loops.size() < 2 || share_->chunks.size() < 2) return;
  // Helpers on the other loops. They need their own handle on the uffd (the
  // session may close while they work).
  share_->uffd = UniqueFd(fcntl(uffd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!share_->uffd) {
    spdlog::warn("page server: session {}: prefetch on one thread: dup userfaultfd: {}", id_,
                 strerror(errno));
    return;
  }
  share_->snap = ls_->snap;
  share_->regions = hs_.regions;
  share_->ps = ps_;
  share_->ratio = ratio_;
  share_->zero_src = zero_src_;
  share_->zero_elision = ls_->spec.zero_elision;
  share_->owner = loop_;
  share_->session = id_;
  for (const auto& other : loops) {
    if (other.get() == loop_ || helpers_out_ + 1 >= static_cast<int>(share_->chunks.size())) continue;
    LoopCtx* helper = other.get();
    auto job = std::make_unique<HelperJob>();
    job->share = share_;
    // A loop that is stopping drops the job; then nobody reports for it.
    if (helper->ev->Post([helper, j = std::shared_ptr<HelperJob>(std::move(job))]() mutable {
          helper->helping.push_back(std::make_unique<HelperJob>(std::move(*j)));
        })) {
      ++helpers_out_;
    }
  }
}

void Session::MarkBusy() {
  if (in_busy_) return;
  in_busy_ = true;
  loop_->busy.push_back(id_);
}

bool Session::Tick() {
  if (closed_) return false;
  if (!around_.empty()) {
    std::vector<Retry> todo;
    todo.swap(around_);
    for (const Retry& r : todo) {
      HandleResult(InstallRange(r.region, r.begin, r.end, r.force, r.prefetch), r.region, r.end, r.force,
                   r.is_fault, r.t0, r.prefetch);
      if (closed_) return false;
    }
  }
  if (!retries_.empty() || prefetching_) ServeEvents(NowNs());  // demand faults first
  if (closed_) return false;
  if (!retries_.empty()) {
    std::vector<Retry> todo;
    todo.swap(retries_);
    for (const Retry& r : todo) {
      Result res = InstallRange(r.region, r.begin, r.end, r.force, r.prefetch);
      HandleResult(res, r.region, r.end, r.force, r.is_fault, r.t0, r.prefetch);
      if (closed_) return false;
    }
  }
  if (prefetching_ && retries_.empty()) {
    uint64_t budget = std::max<uint64_t>(1, kPrefetchSliceBytes / ps_);
    while (budget > 0 && !chunks_exhausted_) {
      if (!chunk_active_) {
        size_t i = share_->next.fetch_add(1, std::memory_order_relaxed);
        if (i >= share_->chunks.size()) {
          chunks_exhausted_ = true;
          break;
        }
        chunk_ = share_->chunks[i];
        chunk_off_ = 0;
        chunk_active_ = true;
      }
      uint64_t begin = chunk_.begin + chunk_off_;
      uint64_t n = std::min(chunk_.count - chunk_off_, budget);
      Result res = InstallRange(chunk_.region, begin, begin + n, kNoPage, true);
      if (res.outcome == Outcome::kRetry) {
        chunk_off_ = res.resume - chunk_.begin;
        break;
      }
      if (res.outcome != Outcome::kDone) {
        HandleResult(res, chunk_.region, begin + n, kNoPage, false, 0);
        return false;
      }
      budget -= n;
      chunk_off_ += n;
      if (chunk_off_ == chunk_.count) chunk_active_ = false;
    }
    if (chunks_exhausted_ && helpers_out_ == 0) PrefetchDone();
  }
  // Waiting for helpers only is not work: their report marks us busy again.
  bool more = !closed_ && (!retries_.empty() || !around_.empty() || (prefetching_ && !chunks_exhausted_));
  if (!more) in_busy_ = false;
  return more;
}

void Session::OnHelperDone(HelperReport report) {
  --helpers_out_;
  if (closed_) return;
  for (const PrefetchShare::Chunk& c : report.installed) {
    for (uint64_t p = c.begin; p < c.begin + c.count; ++p) SetBit(present_, p);
  }
  CountInstalled(false, report.copied, true);
  CountInstalled(true, report.zero, true);
  AtomicPageStats::Bump(stats_->eexist, report.eexist);
  AtomicPageStats::Bump(stats_->eagain, report.eagain);
  ioctls_ += report.ioctls;
  if (report.gone) {
    Close(SessionEventKind::kClosed, absl::UnavailableError("peer's address space is gone"), false);
    return;
  }
  if (!report.error.ok()) {
    Fail(report.error);
    return;
  }
  // What met EAGAIN goes through the session's own retry path (events first).
  for (const PrefetchShare::Chunk& c : report.left) {
    retries_.push_back({c.region, c.begin, c.begin + c.count, kNoPage, false, 0, true});
  }
  MarkBusy();
}

void Session::PrefetchDone() {
  prefetching_ = false;
  {
    absl::MutexLock lock(&ls_->mu);
    --ls_->prefetch_pending;
    ++ls_->done_ok;
    ls_->cv.SignalAll();
  }
  PageStats s = stats_->Read();
  const uint64_t now = NowNs();
  spdlog::info(
      "page server: session {} ({}) prefetch done: {} pages in {:.2f} ms ({} ioctls; {:.2f} ms "
      "since accept)",
      id_, ls_->spec.tag, s.prefetched_pages, static_cast<double>(now - ready_ns_) / 1e6, ioctls_,
      static_cast<double>(now - start_ns_) / 1e6);
  SessionEvent e = MakeEvent(SessionEventKind::kPrefetchDone, absl::OkStatus());
  e.stats = s;
  loop_->server->Emit(e);
}

void Session::FinishRecording() {
  if (recording_ && !record_.empty()) {
    // Kept in snapshot units: a guest page stands for ratio_ of them.
    std::vector<uint64_t> units;
    units.reserve(record_.size());
    for (uint64_t p : record_) units.push_back(p * ratio_);
    const uint64_t block = block_pages_ * ratio_;
    loop_->server->QueueWrite(ls_->snap->files().working_set_path,
                              EncodeWorkingSet(ls_->snap->identity(), units, block));
    ls_->snap->SetWorkingSet(std::move(units), block);
    spdlog::info("page server: session {} ({}) recorded a working set of {} pages of {} KiB", id_,
                 ls_->spec.tag, record_.size(), ps_ >> 10);
  }
  recording_ = false;
  record_.clear();
  record_.shrink_to_fit();
  recorded_.clear();
  recorded_.shrink_to_fit();
  if (claimed_recording_) ls_->snap->ReleaseRecording();
  claimed_recording_ = false;
}

void Session::OnSocketEvent(int32_t revents) {
  if (closed_) return;
  if (revents < 0) {
    Close(SessionEventKind::kClosed, ErrnoError(-revents, "poll socket"), false);
    return;
  }
  if (revents & (POLLHUP | POLLRDHUP | POLLERR)) {
    Close(SessionEventKind::kClosed, absl::UnavailableError("peer hung up"), false);
    return;
  }
  // Firecracker sends nothing after the handshake; discard whatever comes.
  char buf[512];
  while (true) {
    ssize_t n = ::recv(sock_.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0) Close(SessionEventKind::kClosed, absl::UnavailableError("peer hung up"), false);
    return;
  }
}

int Session::RegionOfAddr(uint64_t addr) const {
  // Few regions (one per 3 GiB): a linear scan beats anything clever.
  for (size_t i = 0; i < hs_.regions.size(); ++i) {
    const GuestRegion& r = hs_.regions[i];
    if (addr >= r.base_host_virt_addr && addr - r.base_host_virt_addr < r.size) return static_cast<int>(i);
  }
  return -1;
}

int Session::RegionOfPage(uint64_t page) const {
  for (size_t i = 0; i < hs_.regions.size(); ++i) {
    if (page >= RegionFirst(i) && page < RegionEnd(i)) return static_cast<int>(i);
  }
  return -1;
}

void Session::ServeEvents(uint64_t t0) {
  if (closed_ || !uffd_) return;
  absl::Status st = Drain(t0);
  if (!st.ok()) {
    Fail(st);
    return;
  }
  ResolveFaults();
}

absl::Status Session::Drain(uint64_t t0) {
  uffd_msg msgs[kMsgBatch];
  while (true) {
    ssize_t n = ::read(uffd_.get(), msgs, sizeof(msgs));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return absl::OkStatus();
      return ErrnoError("read userfaultfd");
    }
    if (n == 0) return absl::OkStatus();
    size_t count = static_cast<size_t>(n) / sizeof(uffd_msg);
    for (size_t i = 0; i < count; ++i) {
      const uffd_msg& m = msgs[i];
      if (m.event == UFFD_EVENT_PAGEFAULT) {
        uint64_t addr = m.arg.pagefault.address & ~(ps_ - 1);
        int r = RegionOfAddr(addr);
        bool present = r >= 0 && Present(PageOf(static_cast<size_t>(r), addr));
        faults_.push_back({addr, present, t0});
      } else if (m.event == UFFD_EVENT_REMOVE) {
        AtomicPageStats::Bump(stats_->remove_events);
        uint64_t start = m.arg.remove.start, end = m.arg.remove.end;
        for (size_t r = 0; r < hs_.regions.size(); ++r) {
          const GuestRegion& g = hs_.regions[r];
          // Only pages wholly inside the range are gone (WholePagesIn):
          // marking a partly covered huge page would serve zeros over live
          // data on its next fault.
          AddressRange gone = WholePagesIn(std::max(start, g.base_host_virt_addr),
                                           std::min(end, g.base_host_virt_addr + g.size), ps_);
          if (gone.empty()) continue;
          for (uint64_t p = PageOf(r, gone.begin), last = PageOf(r, gone.end); p < last; ++p) {
            ClearBit(present_, p);
            SetBit(removed_, p);
          }
        }
      } else {
        spdlog::debug("page server: session {}: ignoring uffd event {}", id_, static_cast<int>(m.event));
      }
    }
    if (count < kMsgBatch) return absl::OkStatus();
  }
}

void Session::ResolveFaults() {
  std::vector<Fault> faults;
  faults.swap(faults_);
  for (const Fault& f : faults) {
    if (closed_) return;
    int r = RegionOfAddr(f.addr);
    if (r < 0) {
      Fail(absl::InternalError(
          absl::StrFormat("inconsistent mapping: fault at 0x%x outside every region", f.addr)));
      return;
    }
    size_t region = static_cast<size_t>(r);
    uint64_t page = PageOf(region, f.addr);
    AtomicPageStats::Bump(stats_->faults);
    if (recording_ && !TestBit(recorded_, page)) {
      SetBit(recorded_, page);
      record_.push_back(page);
    }
    if (!f.was_present && Present(page)) {
      // Installed earlier in this batch; that ioctl woke this waiter too.
      stats_->AddLatency(NowNs() - f.t0);
      continue;
    }
    uint64_t begin = page, end = page + 1;
    if (block_pages_ > 1) {
      begin = std::max(RegionFirst(region), page / block_pages_ * block_pages_);
      end = std::min(RegionEnd(region), page / block_pages_ * block_pages_ + block_pages_);
    }
    // A fault on a page we think present: install it anyway (EEXIST wakes).
    uint64_t force = f.was_present ? page : kNoPage;
    // The faulting page first; the rest of its block after every fault of
    // this loop iteration (all sessions) has been served.
    Result res = InstallRange(region, page, page + 1, force, false);
    HandleResult(res, region, page + 1, force, true, f.t0);
    if (closed_) return;
    if (res.outcome == Outcome::kDone && end - begin > 1) {
      if (page + 1 < end) around_.push_back({region, page + 1, end, kNoPage, false, 0, false});
      if (begin < page) around_.push_back({region, begin, page, kNoPage, false, 0, false});
      MarkBusy();
    }
  }
}

void Session::HandleResult(const Result& r, size_t region, uint64_t end, uint64_t force, bool is_fault,
                           uint64_t t0, bool prefetch) {
  switch (r.outcome) {
    case Outcome::kDone:
      if (is_fault) stats_->AddLatency(NowNs() - t0);
      return;
    case Outcome::kRetry:
      retries_.push_back({region, r.resume, end, force, is_fault, t0, prefetch});
      MarkBusy();
      return;
    case Outcome::kGone:
      Close(SessionEventKind::kClosed, absl::UnavailableError("peer's address space is gone"), false);
      return;
    case Outcome::kError:
      Fail(r.error);
      return;
  }
}

Session::Result Session::InstallRange(size_t region, uint64_t begin, uint64_t end, uint64_t force,
                                      bool prefetch) {
  const uint64_t max_pages = std::max<uint64_t>(1, kMaxIoctlBytes / ps_);
  uint64_t p = begin;
  while (p < end) {
    if (Present(p) && p != force) {
      ++p;
      continue;
    }
    Kind kind = KindOf(p);
    uint64_t q = p + 1;
    while (q < end && q - p < max_pages && (!Present(q) || q == force) && KindOf(q) == kind) ++q;
    Result r = InstallRun(region, p, q - p, kind, prefetch, force);
    if (r.outcome != Outcome::kDone) return r;
    p = q;
  }
  return {};
}

absl::Status Session::RefusedRefaultsError(uint64_t dst) const {
  std::string pool;
  if (ps_ > ls_->snap->page_size()) {
    absl::StatusOr<HugePagePool> p = ReadHugePagePool();
    pool = p.ok() ? absl::StrFormat("; host hugetlb pool of %d KiB pages: %d free, %d reserved, %d total",
                                    p->page_size >> 10, p->free, p->reserved, p->total)
                  : absl::StrCat("; ", p.status().message());
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "ioctl UFFDIO_COPY [0x%x+%d]: EEXIST %d times in a row for pages the guest keeps faulting on: they "
      "are not there (an exhausted hugetlb pool, or cgroup hugetlb limit, reads like this)%s",
      dst, ps_, refused_refaults_, pool));
}

void Session::CountInstalled(bool zero, uint64_t pages, bool prefetch) {
  if (pages == 0) return;
  if (zero) {
    AtomicPageStats::Bump(stats_->zero_pages, pages * ratio_);
  } else {
    AtomicPageStats::Bump(stats_->pages_copied, pages * ratio_);
    AtomicPageStats::Bump(stats_->bytes_copied, pages * ps_);
  }
  if (prefetch) AtomicPageStats::Bump(stats_->prefetched_pages, pages * ratio_);
}

Session::Result Session::InstallRun(size_t region, uint64_t page, uint64_t count, Kind kind, bool prefetch,
                                    uint64_t force) {
  while (count > 0) {
    const uint64_t dst = AddrOf(region, page);
    const uint64_t len = count * ps_;
    const uint8_t* src = SourceOf(kind, page);
    ++ioctls_;
    const IoctlResult r = InstallIoctl(uffd_.get(), dst, src, len);
    const int err = r.err;
    uint64_t pages_done = r.bytes / ps_;
    for (uint64_t i = 0; i < pages_done; ++i) SetBit(present_, page + i);
    CountInstalled(kind == Kind::kZero, pages_done, prefetch);
    if (pages_done > 0) refused_refaults_ = 0;
    page += pages_done;
    count -= pages_done;
    if (err == 0 || pages_done > 0) continue;  // done, or partial: go on from there
    switch (err) {
      case EEXIST: {
        AtomicPageStats::Bump(stats_->eexist);
        // EEXIST for a page the guest faults on although we saw it there
        // before: it is not there. Linux 6.x answers a hugetlb copy that
        // finds the pool empty with EEXIST rather than ENOMEM (measured on
        // 6.18), and waking the vCPU then only makes it fault again, for
        // ever. Give up after a run of these with nothing installed between.
        if (page == force && ++refused_refaults_ >= kMaxRefusedRefaults) {
          return {Outcome::kError, page, RefusedRefaultsError(dst)};
        }
        SetBit(present_, page);
        uffdio_range wake{AddrOf(region, page), ps_};
        ::ioctl(uffd_.get(), UFFDIO_WAKE, &wake);
        ++page;
        --count;
        continue;
      }
      case EAGAIN:
        AtomicPageStats::Bump(stats_->eagain);
        return {Outcome::kRetry, page, {}};
      case ESRCH:
        return {Outcome::kGone, page, {}};
      default:
        return {Outcome::kError, page,
                ErrnoError(err, absl::StrFormat("ioctl %s [0x%x+%d]", IoctlName(src, zero_src_), dst, len))};
    }
  }
  return {};
}

void Session::Close(SessionEventKind kind, absl::Status why, bool kill) {
  if (closed_) return;
  closed_ = true;
  if (share_) share_->cancelled.store(true, std::memory_order_relaxed);
  io::EventLoop* ev = loop_->ev.get();
  for (io::OpId* op : {&hs_poll_, &hs_timer_, &uffd_poll_, &sock_poll_, &pid_poll_, &rec_timer_}) {
    if (*op != 0) ev->Cancel(*op);
    *op = 0;
  }
  bool killed = false;
  if (kill && pidfd_) {
    if (PidfdSendSignal(pidfd_.get(), SIGKILL) == 0) {
      killed = true;
    } else if (errno != ESRCH) {
      spdlog::error("page server: session {}: cannot kill peer {}: {}", id_, pid_, strerror(errno));
    }
  }
  PageStats final_stats = stats_->Read();
  if (kind == SessionEventKind::kClosed) {
    spdlog::info("page server: session {} ({}) closed: {}; {}", id_, ls_->spec.tag,
                 std::string(why.message()), final_stats.ToString());
  } else {
    spdlog::warn("page server: session {} ({}) {}{}: {}", id_, ls_->spec.tag, SessionEventKindName(kind),
                 killed ? ", peer killed" : "", why.ToString());
  }
  FinishRecording();
  {
    absl::MutexLock lock(&ls_->mu);
    auto& live = ls_->live;
    live.erase(
        std::remove_if(live.begin(), live.end(), [&](const ListenerShared::Live& l) { return l.id == id_; }),
        live.end());
    ls_->closed.Merge(final_stats);
    if (prefetching_) --ls_->prefetch_pending;
    if (kind != SessionEventKind::kClosed || !ready_) {
      ls_->last_failure = why;
    } else if (prefetching_) {
      ls_->last_failure = absl::AbortedError(absl::StrCat("session closed during prefetch: ", why.message()));
    }
    ls_->cv.SignalAll();
  }
  prefetching_ = false;
  SessionEvent e = MakeEvent(kind, std::move(why));
  e.peer_killed = killed;
  e.stats = final_stats;
  loop_->server->Emit(e);
  auto it = loop_->sessions.find(id_);
  if (it != loop_->sessions.end()) {
    loop_->graveyard.push_back(std::move(it->second));
    loop_->sessions.erase(it);
  }
}

// ---------------------------------------------------------------- PageServer

PageServer::PageServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<PageServer>> PageServer::Create(const PageServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  (void)ZeroSource();  // made here, not on a loop thread at the first huge-page session
  int n = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  for (int i = 0; i < n; ++i) {
    auto ctx = std::make_unique<LoopCtx>();
    ctx->server = impl.get();
    ctx->index = static_cast<size_t>(i);
    io::EventLoopOptions eo;
    eo.defer_taskrun = options.defer_taskrun;
    eo.name = absl::StrCat("fcvm-pager-", i);
    auto ev = io::EventLoop::Create(eo);
    if (!ev.ok()) {
      for (auto& l : impl->loops) {
        l->ev->RequestStop();
        l->ev->Join();
      }
      return Annotate(ev.status(), "page server");
    }
    ctx->ev = std::move(*ev);
    LoopCtx* raw = ctx.get();
    int nice = options.loop_nice;
    ctx->ev->Post([raw, nice] {
      raw->ev->SetBusyHook([raw] { return raw->BusyHook(); });
      if (nice != 0 && setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), nice) < 0) {
        spdlog::warn("page server: cannot set loop thread nice {}: {}", nice, strerror(errno));
      }
    });
    impl->loops.push_back(std::move(ctx));
  }
  Impl* raw = impl.get();
  impl->writer = std::thread([raw] { raw->WriterMain(); });
  return std::unique_ptr<PageServer>(new PageServer(std::move(impl)));
}

PageServer::~PageServer() { Stop(); }

int PageServer::num_loops() const { return static_cast<int>(impl_->loops.size()); }

void PageServer::SetEventCallback(std::function<void(const SessionEvent&)> callback) {
  auto cb = std::make_shared<std::function<void(const SessionEvent&)>>(std::move(callback));
  absl::MutexLock lock(&impl_->cb_mu);
  impl_->callback = std::move(cb);
}

absl::StatusOr<ListenerId> PageServer::AddListener(const ListenerSpec& spec, ClonePolicy* resolved) {
  if (spec.socket_path.empty()) return absl::InvalidArgumentError("listener: empty socket_path");
  if (spec.files.mem_file_path.empty()) return absl::InvalidArgumentError("listener: empty mem_file_path");
  RETURN_IF_ERROR(Annotate(CheckFaultAround(spec.fault_around_bytes), "listener"));
  if (spec.handshake_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("listener: handshake_timeout must be positive");
  }
  for (auto& l : impl_->loops) {
    if (l->ev->InLoopThread())
      return absl::FailedPreconditionError("AddListener called on a page-server thread");
  }
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) return absl::FailedPreconditionError("page server stopped");
  }
  impl_->FlushWrites();  // a working set just recorded is on disk before we look
  auto snap = impl_->registry.Get(spec.files);
  if (!snap.ok()) return Annotate(snap.status(), "listener: snapshot");
  if (spec.policy == ClonePolicy::kPrefetch || spec.policy == ClonePolicy::kAuto) {
    (*snap)->PopulatePrefetchSource();  // once per working set: the copies then take no source fault
  }
  ListenOptions lo;
  lo.mode = spec.socket_mode;
  lo.nonblocking = true;
  auto fd = ListenUnix(spec.socket_path, lo);
  if (!fd.ok()) return Annotate(fd.status(), "listener");
  auto ls = std::make_shared<ListenerShared>();
  ls->id = impl_->next_listener.fetch_add(1);
  ls->spec = spec;
  ls->snap = std::move(*snap);
  if (spec.max_connections == 1 && spec.policy == ClonePolicy::kAuto) {
    auto ws = ls->snap->working_set();
    if (ws && !ws->empty()) {
      ls->spec.policy = ClonePolicy::kPrefetch;
    } else if (ls->snap->TryClaimRecording()) {
      ls->spec.policy = ClonePolicy::kRecord;
      ls->holds_recording.store(true);
    } else {
      ls->spec.policy = ClonePolicy::kNone;
    }
  }
  if (resolved != nullptr) *resolved = ls->spec.policy;
  ls->home = impl_->PickLoop();
  LoopCtx* home = impl_->loops[ls->home].get();
  auto fdp = std::make_shared<UniqueFd>(std::move(*fd));
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) {
      ::unlink(spec.socket_path.c_str());
      return absl::FailedPreconditionError("page server stopped");
    }
    impl_->listeners[ls->id] = ls;
  }
  bool posted = home->ev->Post([home, ls, fdp] {
    auto listener = std::make_unique<Listener>(home, ls, std::move(*fdp));
    listener->Start();
    home->listeners[ls->id] = std::move(listener);
  });
  if (!posted) {
    ::unlink(spec.socket_path.c_str());
    absl::MutexLock lock(&impl_->mu);
    impl_->listeners.erase(ls->id);
    return absl::FailedPreconditionError("page server stopped");
  }
  spdlog::info(
      "page server: listener {} ({}) on {} for {} ({} pages, {} zero), policy {}, fault-around {} KiB",
      ls->id, spec.tag, spec.socket_path, spec.files.mem_file_path, ls->snap->num_pages(),
      ls->snap->zero_pages(), ClonePolicyName(ls->spec.policy), spec.fault_around_bytes / 1024);
  return ls->id;
}

absl::StatusOr<ListenerId> PageServer::AdoptSession(AdoptSpec spec) {
  ListenerSpec& ls_spec = spec.listener;
  if (ls_spec.files.mem_file_path.empty()) return absl::InvalidArgumentError("adopt: empty mem_file_path");
  if (spec.pid <= 0) return absl::InvalidArgumentError("adopt: no peer pid");
  if (!spec.uffd) return absl::InvalidArgumentError("adopt: no userfaultfd");
  RETURN_IF_ERROR(Annotate(CheckFaultAround(ls_spec.fault_around_bytes), "adopt"));
  for (auto& l : impl_->loops) {
    if (l->ev->InLoopThread())
      return absl::FailedPreconditionError("AdoptSession called on a page-server thread");
  }
  RETURN_IF_ERROR(CheckIsUserfaultfd(spec.uffd.get()));
  RETURN_IF_ERROR(SetNonblocking(spec.uffd.get()));
  // The pidfd first: from here on the pid cannot name another process.
  UniqueFd pidfd(PidfdOpen(spec.pid, 0));
  if (!pidfd) return ErrnoError(absl::StrCat("adopt: pidfd_open ", spec.pid));
  impl_->FlushWrites();
  auto snap = impl_->registry.Get(ls_spec.files);
  if (!snap.ok()) return Annotate(snap.status(), "adopt: snapshot");
  HandshakeMessage hm{spec.handshake, 1, false, spec.handshake.size() >= kHandshakeBufferSize};
  absl::StatusOr<Handshake> hs = ParseHandshake(hm, (*snap)->size());
  if (!hs.ok()) return Annotate(hs.status(), "adopt: recorded handshake");
  if (absl::StatusOr<const uint8_t*> zero = ZeroSourceFor(hs->page_size, (*snap)->page_size()); !zero.ok()) {
    return Annotate(zero.status(), "adopt");
  }
  auto ls = std::make_shared<ListenerShared>();
  ls->id = impl_->next_listener.fetch_add(1);
  ls->spec = ls_spec;
  ls->spec.socket_path.clear();
  ls->spec.policy = ClonePolicy::kNone;
  ls->spec.paused_during_prefetch = false;
  ls->spec.handshake_copy_path.clear();
  ls->snap = std::move(*snap);
  ls->accepted.store(1);
  ls->home = impl_->PickLoop();
  LoopCtx* home = impl_->loops[ls->home].get();
  SessionId sid = impl_->next_session.fetch_add(1);
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) return absl::FailedPreconditionError("page server stopped");
    impl_->listeners[ls->id] = ls;
  }
  auto parts = std::make_shared<std::tuple<Handshake, UniqueFd, UniqueFd>>(
      *std::move(hs), std::move(spec.uffd), std::move(pidfd));
  pid_t pid = spec.pid;
  bool posted = home->ev->Post([home, ls, sid, parts, pid] {
    auto& [h, u, p] = *parts;
    home->AddAdopted(ls, sid, std::move(h), std::move(u), std::move(p), pid);
  });
  if (!posted) {
    absl::MutexLock lock(&impl_->mu);
    impl_->listeners.erase(ls->id);
    return absl::FailedPreconditionError("page server stopped");
  }
  spdlog::info("page server: listener {} ({}) adopts peer pid {} for {}", ls->id, ls_spec.tag, pid,
               ls_spec.files.mem_file_path);
  return ls->id;
}

absl::StatusOr<UniqueFd> TakeUserfaultfd(pid_t pid) {
  const std::string dir = absl::StrCat("/proc/", pid, "/fd");
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str()); d != nullptr) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    ::closedir(d);
  } else {
    return ErrnoError(absl::StrCat("userfaultfd of pid ", pid, ": opendir ", dir));
  }
  int found = -1;
  for (const std::string& n : names) {
    char target[256];
    ssize_t len = ::readlink((dir + "/" + n).c_str(), target, sizeof(target) - 1);
    if (len < 0 || absl::string_view(target, static_cast<size_t>(len)) != "anon_inode:[userfaultfd]")
      continue;
    if (found >= 0)
      return absl::FailedPreconditionError(absl::StrCat("pid ", pid, " has several userfaultfds"));
    if (!absl::SimpleAtoi(n, &found)) continue;
  }
  if (found < 0) return absl::NotFoundError(absl::StrCat("pid ", pid, " has no userfaultfd"));
  UniqueFd pidfd(PidfdOpen(pid, 0));
  if (!pidfd) return ErrnoError(absl::StrCat("pidfd_open ", pid));
  UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), found, 0)));
  if (!fd) return ErrnoError(absl::StrCat("pidfd_getfd fd ", found, " of pid ", pid));
  RETURN_IF_ERROR(CheckIsUserfaultfd(fd.get()));
  return fd;
}

absl::StatusOr<std::shared_ptr<SnapshotMemory>> PageServer::OpenSnapshot(const SnapshotFiles& files) {
  impl_->FlushWrites();
  ASSIGN_OR_RETURN(std::shared_ptr<SnapshotMemory> snap, impl_->registry.Get(files));
  snap->PopulatePrefetchSource();
  return snap;
}

absl::Status PageServer::WaitPrefetchDone(ListenerId id, absl::Time deadline) {
  std::shared_ptr<ListenerShared> ls;
  {
    absl::MutexLock lock(&impl_->mu);
    auto it = impl_->listeners.find(id);
    if (it == impl_->listeners.end()) return absl::NotFoundError(absl::StrCat("no listener ", id));
    ls = it->second;
  }
  absl::MutexLock lock(&ls->mu);
  while (true) {
    if (ls->removed) return absl::CancelledError(absl::StrCat("listener ", id, " removed"));
    if (ls->prefetch_pending == 0 && ls->done_ok > 0) return absl::OkStatus();
    if (ls->prefetch_pending == 0 && !ls->last_failure.ok()) {
      return absl::AbortedError(absl::StrCat("clone session failed: ", ls->last_failure.message()));
    }
    if (ls->cv.WaitWithDeadline(&ls->mu, deadline)) {
      if (ls->prefetch_pending == 0 && ls->done_ok > 0) return absl::OkStatus();
      return absl::DeadlineExceededError(
          absl::StrCat("listener ", id, ": prefetch not done by the deadline"));
    }
  }
}

absl::Status PageServer::RemoveListener(ListenerId id) { return impl_->Remove(id, false); }

absl::Status PageServer::DetachListener(ListenerId id) { return impl_->Remove(id, true); }

absl::Status PageServer::Impl::Remove(ListenerId id, bool leave_peers) {
  Impl* impl_ = this;
  for (auto& l : impl_->loops) {
    if (l->ev->InLoopThread())
      return absl::FailedPreconditionError("RemoveListener called on a page-server thread");
  }
  std::shared_ptr<ListenerShared> ls;
  {
    absl::MutexLock lock(&impl_->mu);
    auto it = impl_->listeners.find(id);
    if (it == impl_->listeners.end()) return absl::NotFoundError(absl::StrCat("no listener ", id));
    ls = it->second;
  }
  {
    absl::MutexLock lock(&ls->mu);
    ls->removed = true;
    ls->cv.SignalAll();
  }
  std::latch done(static_cast<ptrdiff_t>(impl_->loops.size()));
  absl::Status why = leave_peers ? absl::CancelledError("listener detached (peer left running)")
                                 : absl::CancelledError("listener removed");
  for (auto& l : impl_->loops) {
    LoopCtx* ctx = l.get();
    bool home = ctx->index == ls->home;
    if (!ctx->ev->Post([ctx, home, id, &why, &done, leave_peers] {
          if (home) ctx->listeners.erase(id);
          ctx->CloseListenerSessions(id, why, leave_peers);
          done.count_down();
        })) {
      done.count_down();
    }
  }
  done.wait();
  if (!ls->spec.socket_path.empty())
    ::unlink(ls->spec.socket_path.c_str());  // if the loop was already stopped
  PageStats total;
  {
    absl::MutexLock lock(&ls->mu);
    total = ls->closed;
    for (auto& l : ls->live) total.Merge(l.stats->Read());
  }
  absl::MutexLock lock(&impl_->mu);
  impl_->retired[ls->snap->path()].Merge(total);
  impl_->listeners.erase(id);
  return absl::OkStatus();
}

ServerStats PageServer::GetStats() {
  ServerStats out;
  std::map<std::string, SnapshotStats> snaps;
  absl::MutexLock lock(&impl_->mu);
  for (auto& [id, ls] : impl_->listeners) {
    ListenerStats l;
    l.id = id;
    l.tag = ls->spec.tag;
    l.mem_file = ls->snap->path();
    l.sessions_total = ls->accepted.load();
    {
      absl::MutexLock llock(&ls->mu);
      l.stats = ls->closed;
      for (auto& live : ls->live) {
        SessionStats s{live.id, live.pid, live.stats->Read(), live.page_size};
        l.stats.Merge(s.stats);
        l.sessions.push_back(std::move(s));
      }
      l.sessions_active = static_cast<uint32_t>(ls->live.size());
    }
    SnapshotStats& s = snaps[l.mem_file];
    s.mem_file = l.mem_file;
    s.pages = ls->snap->num_pages();
    s.zero_pages = ls->snap->zero_pages();
    ++s.listeners;
    s.stats.Merge(l.stats);
    out.total.Merge(l.stats);
    out.listeners.push_back(std::move(l));
  }
  for (auto& [path, st] : impl_->retired) {
    SnapshotStats& s = snaps[path];
    s.mem_file = path;
    s.stats.Merge(st);
    out.total.Merge(st);
  }
  for (auto& [path, s] : snaps) out.snapshots.push_back(std::move(s));
  return out;
}

void PageServer::Stop() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  for (auto& l : impl_->loops) {
    if (l->ev->InLoopThread()) {
      spdlog::critical("PageServer::Stop called on a page-server thread");
      std::abort();
    }
  }
  std::vector<std::shared_ptr<ListenerShared>> all;
  {
    absl::MutexLock lock(&impl_->mu);
    for (auto& [id, ls] : impl_->listeners) all.push_back(ls);
  }
  for (auto& ls : all) {
    absl::MutexLock lock(&ls->mu);
    ls->removed = true;
    ls->cv.SignalAll();
  }
  for (auto& l : impl_->loops) {
    LoopCtx* ctx = l.get();
    ctx->ev->Post([ctx] { ctx->Shutdown(); });
  }
  for (auto& l : impl_->loops) l->ev->RequestStop();
  for (auto& l : impl_->loops) l->ev->Join();
  for (auto& ls : all) {
    if (!ls->spec.socket_path.empty()) ::unlink(ls->spec.socket_path.c_str());
  }
  {
    absl::MutexLock lock(&impl_->wmu);
    impl_->writer_stop = true;
  }
  if (impl_->writer.joinable()) impl_->writer.join();
}

}  // namespace fcvm::uffd
