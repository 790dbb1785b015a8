#pragma once

// The page server: serves guest memory to Firecracker clones restored with the
// Uffd memory backend, from snapshot memory files.
//
// One PageServer per process (fcvmd, or the standalone fcvm-pager) serves
// every clone of every snapshot on a few io_uring loop threads (default one
// per core). Work unit:
//
//  - Listener: a listening Unix socket at `socket_path` (Firecracker's
//    `backend_path`) bound to one memory file. It accepts up to
//    `max_connections` connections (1 for a daemon clone, 0 = unlimited for
//    fcvm-pager); each connection is its own Session. The socket exists when
//    AddListener returns, so Firecracker's /snapshot/load may start at once.
//  - Session: one Firecracker process. Handshake (see handshake.h) within
//    `handshake_timeout`, then page faults, REMOVE events and prefetch served
//    on one loop thread. Sessions are spread round-robin over the loops.
//  - SnapshotMemory (snapshot.h): one read-only mapping + zero map + working
//    set per memory file, shared by every listener/session using it.
//
// Fault resolution: all pending uffd events are drained before any is
// resolved. A page in a range removed by a REMOVE event, or all-zero in the
// snapshot (zero elision), gets UFFDIO_ZEROPAGE; any other page UFFDIO_COPY
// from the shared mapping. Fault-around installs the whole aligned block
// around a faulting page, skipping pages already present (per-session
// bitmap). EEXIST = already present (the waiter is woken); EAGAIN = an event
// is pending: drained, then retried; partial copies continue where they
// stopped.
//
// Page size: each session works in the page size its peer's handshake names
// (4 KiB, or 2 MiB for a guest with "huge_pages": "2M", whose memory is
// hugetlbfs): every fault, zero decision, REMOVE, recorded page and prefetch
// is in whole pages of that size, and a fault resolves the whole page (fault-
// around is moot beyond it). Nothing has to be told in advance: the snapshot's
// view (snapshot.h) keeps its maps in base pages and serves any page size up
// to kMaxPageSize. UFFDIO_ZEROPAGE does not exist for hugetlbfs, so a zero
// huge page is a UFFDIO_COPY from a shared, never-written zero mapping (one
// 4 KiB physical zero page, mapped 512 times; see docs/page-server.md).
// When the host's huge page pool runs dry the copy fails with ENOMEM and the
// session fails like any other (its Firecracker is killed under kKill).
//
// Failure isolation: a session whose handshake is bad, whose mapping turns
// out inconsistent (fault outside every region) or whose ioctl fails for good
// is closed with a reason (SessionEvent) and, with FailurePolicy::kKill, its
// peer is SIGKILLed through the pidfd taken from SO_PEERPIDFD (a Firecracker
// whose pager is gone would freeze on its next fault). Nothing else is
// affected. Peer hang-up (socket or process exit) releases everything the
// session holds.
//
// Threading: all methods are thread-safe, but must not be called from the
// event callback (which runs on a loop thread) except GetStats. Loop threads
// own all fault-path state; the methods here post work to them. The fault path
// takes no lock.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"
#include "lib/uffd/policy.h"
#include "lib/uffd/snapshot.h"
#include "lib/uffd/stats.h"

namespace fcvm::uffd {

using ListenerId = uint64_t;
using SessionId = uint64_t;

// What happens to a clone's Firecracker when its session fails or is removed.
enum class FailurePolicy {
  kKill,  // SIGKILL it through its pidfd (never leave a VM frozen)
  kDrop,  // only close our side (for peers we must not kill, e.g. tests)
};

// Default fault-around block (see docs/page-server.md for the measurement).
inline constexpr uint64_t kDefaultFaultAroundBytes = 32 * 1024;

// The largest guest page size served (2 MiB: Firecracker's "huge_pages": "2M").
// A handshake naming a larger one is refused.
inline constexpr uint64_t kMaxPageSize = 2 << 20;

struct ListenerSpec {
  std::string socket_path;
  SnapshotFiles files;  // memory file; zero map / working set default beside it
  ClonePolicy policy = ClonePolicy::kNone;
  // Aligned block installed around a fault; <= page size turns fault-around off.
  uint64_t fault_around_bytes = kDefaultFaultAroundBytes;
  // Install all-zero snapshot pages with UFFDIO_ZEROPAGE (no memory used).
  bool zero_elision = true;
  uint32_t max_connections = 1;  // 0 = unlimited
  FailurePolicy on_failure = FailurePolicy::kKill;
  absl::Duration handshake_timeout = absl::Seconds(5);
  // How long a recording clone records: the working set is written when this
  // elapses or when the session ends, whichever comes first.
  absl::Duration record_for = absl::InfiniteDuration();
  mode_t socket_mode = 0600;
  std::string tag;  // free-form (the clone id); carried in events and stats
  // The caller's promise that the peer's guest does not run before
  // WaitPrefetchDone returns (prefetch-then-resume: the snapshot is loaded
  // paused). The prefetch is then spread over every loop thread. Without it,
  // it stays on the session's own thread, where every copy is ordered after
  // the REMOVE events (balloon) read before it.
  bool paused_during_prefetch = false;
  // Where each session keeps a copy of its peer's handshake (written when the
  // session becomes ready; empty = nowhere). With it, a successor process can
  // take the clone over after this one is gone (AdoptSession).
  std::string handshake_copy_path;
};

// A clone whose previous page server is gone (fcvmd crashed, was restarted
// or upgraded), taken over by this one: its Firecracker keeps its own copy of
// the userfaultfd, so its faults have queued there meanwhile.
struct AdoptSpec {
  // files, fault_around_bytes, zero_elision, on_failure and tag are used;
  // no socket is made (socket_path is ignored), the policy is kNone (the
  // working set, if any, was installed or recorded by the previous server).
  ListenerSpec listener;
  std::string handshake;  // the handshake the peer sent (a handshake_copy_path file's contents)
  UniqueFd uffd;          // the peer's userfaultfd (TakeUserfaultfd)
  pid_t pid = 0;          // the peer
};

// A duplicate of process `pid`'s userfaultfd, taken with pidfd_getfd(2)
// (root, or ptrace rights over it). NotFound when it has none,
// FailedPrecondition when it has several.
absl::StatusOr<UniqueFd> TakeUserfaultfd(pid_t pid);

enum class SessionEventKind {
  kReady,         // handshake accepted, serving
  kRejected,      // handshake refused (status says why)
  kPrefetchDone,  // working set installed
  kFailed,        // serving failed for good (status says why)
  kClosed,        // peer hung up / exited, or listener removed / server stopped
};
const char* SessionEventKindName(SessionEventKind kind);

struct SessionEvent {
  SessionEventKind kind;
  ListenerId listener = 0;
  SessionId session = 0;
  std::string tag;
  pid_t peer_pid = 0;
  absl::Status status;                      // the reason for kRejected / kFailed / kClosed
  bool peer_killed = false;                 // we sent SIGKILL to the peer
  ClonePolicy policy = ClonePolicy::kNone;  // resolved policy (kAuto never appears)
  uint32_t regions = 0;                     // guest memory regions in the handshake (0 before it)
  PageStats stats;                          // the session's final stats on kFailed / kClosed
  uint64_t page_size = 0;                   // the guest's page size, bytes (0 before the handshake)
};

struct SessionStats {
  SessionId id = 0;
  pid_t peer_pid = 0;
  PageStats stats;
  uint64_t page_size = 0;  // the guest's page size, bytes (0 before the handshake)
};

struct ListenerStats {
  ListenerId id = 0;
  std::string tag;
  std::string mem_file;
  uint32_t sessions_active = 0;
  uint32_t sessions_total = 0;         // accepted connections, good or bad
  std::vector<SessionStats> sessions;  // live ones
  PageStats stats;                     // live + closed sessions
};

struct SnapshotStats {
  std::string mem_file;
  uint64_t pages = 0;
  uint64_t zero_pages = 0;
  uint32_t listeners = 0;
  PageStats stats;  // every session ever served from it by this server
};

struct ServerStats {
  std::vector<ListenerStats> listeners;
  std::vector<SnapshotStats> snapshots;
  PageStats total;
};

struct PageServerOptions {
  int threads = 0;            // loop threads; 0 = one per core
  bool defer_taskrun = true;  // see lib/io/event_loop.h
  // Nice value of the loop threads (0 = leave as is). A handful of threads
  // serve every clone, whereas a thread-per-clone design gets N times the CPU
  // weight under contention; -10 made no measurable difference on the test
  // host (docs/page-server.md), so the default leaves it alone. Lowering it
  // needs CAP_SYS_NICE; failure is logged, not fatal.
  int loop_nice = 0;
};

class PageServer {
 public:
  // Starts the loop threads. Errors: io_uring or eventfd creation failures.
  static absl::StatusOr<std::unique_ptr<PageServer>> Create(const PageServerOptions& options = {});
  // Stop().
  ~PageServer();
  PageServer(const PageServer&) = delete;
  PageServer& operator=(const PageServer&) = delete;

  // Called on a loop thread for every session event; must be quick and must
  // not call back into the server (except GetStats). Set it before adding
  // listeners; replacing it later is safe (thread-safe swap).
  void SetEventCallback(std::function<void(const SessionEvent&)> callback);

  // Opens (or shares) the snapshot, creates the socket and starts accepting.
  // Errors: InvalidArgument (bad spec), the snapshot's open/mmap errors, the
  // socket's bind/listen errors, FailedPrecondition after Stop().
  //
  // `resolved`, when given, receives the policy the listener's sessions will
  // use. For a one-connection listener (a daemon clone) kAuto is resolved
  // here, once: kPrefetch when the snapshot has a working set, else kRecord
  // when no other clone is recording it (the claim is held for this
  // listener's session), else kNone; so the caller knows at once whether to
  // load paused and wait for the prefetch. For other listeners kAuto is
  // resolved per session at its handshake and `*resolved` is kAuto.
  absl::StatusOr<ListenerId> AddListener(const ListenerSpec& spec, ClonePolicy* resolved = nullptr);

  // The server's shared view of a snapshot memory file: its mapping, zero map
  // and working set, with the working set's source pages populated. Holding
  // the reference keeps all that loaded while no clone uses the snapshot, so
  // the next clone's AddListener finds it ready instead of mapping and reading
  // it again. Errors: the snapshot's open/mmap errors.
  absl::StatusOr<std::shared_ptr<SnapshotMemory>> OpenSnapshot(const SnapshotFiles& files);

  // Waits until the listener has a session that completed its handshake and
  // every such session finished its prefetch (immediately after the handshake
  // when nothing is prefetched). Errors: NotFound (unknown id),
  // DeadlineExceeded, Aborted when the listener's only session(s) failed
  // before being ready (message carries the reason), Cancelled when removed.
  absl::Status WaitPrefetchDone(ListenerId id, absl::Time deadline);

  // Stops accepting, closes the socket (unlinks it) and ends the listener's
  // sessions (killing their peers under kKill). Blocks until done. NotFound
  // for an unknown id.
  absl::Status RemoveListener(ListenerId id);

  // RemoveListener, but the peers are left as they are, whatever the
  // listener's FailurePolicy: for a clean stop of a server whose successor
  // will adopt them (their faults wait meanwhile).
  absl::Status DetachListener(ListenerId id);

  // Serves a clone another server served until now (see AdoptSpec): a
  // listener without a socket, holding one session that starts ready. Every
  // thread of the peer that waits on a fault the previous server had read but
  // not resolved is woken (UFFDIO_WAKE over each region), so that it faults
  // again, to us. Pages installed before stay (the kernel's EEXIST tells
  // which); REMOVE events the previous server saw are not known here (a
  // balloon-freed page that is touched again gets its snapshot content).
  // Errors: InvalidArgument (bad handshake or spec), NotFound (no memory
  // file), FailedPrecondition after Stop(); the returned id works with
  // every other method.
  absl::StatusOr<ListenerId> AdoptSession(AdoptSpec spec);

  // Counters of every listener, snapshot and the total. Thread-safe.
  ServerStats GetStats();

  // Ends every session (per its policy), closes every listener, stops and
  // joins the loops, flushes pending working-set files. Idempotent.
  void Stop();

  int num_loops() const;

  struct Impl;  // opaque; public only so the .cc's helpers can name it

 private:
  explicit PageServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcvm::uffd
