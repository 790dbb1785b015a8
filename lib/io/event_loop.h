#pragma once

// One io_uring event loop on its own thread.
//
// An EventLoop owns a thread and one io_uring created ON that thread with
// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (completion work runs
// only when the loop asks for events, on the loop thread; measured on this
// project's hosts, the default flags made a uffd server 1.4-1.6x slower than a
// thread per clone, these flags remove the penalty). If the kernel refuses
// those flags the ring is created with default flags and `degraded()` says so.
//
// Threading:
//  - Post() and RequestStop() are thread-safe. Posted tasks run on the loop
//    thread in FIFO order. Hand-off is a mutex-protected queue plus an eventfd
//    the ring polls; the lock is held only to push or swap the queue, and the
//    loop takes it only when an atomic flag says something was posted.
//  - Everything else (PollMultishot, Accept, Timeout, Cancel, SetBusyHook)
//    must be called on the loop thread (from a posted task or a handler).
//    Handlers run on the loop thread.
//
// Ownership: the loop never owns the fds it watches; the caller keeps them
// open until the operation is cancelled or completed (io_uring holds its own
// file reference meanwhile, so closing early is safe but pointless). A handler
// is destroyed when its operation completes for good or when it is cancelled:
// after Cancel(id) returns, the handler is never called again, so it may
// capture pointers to objects that the canceller is about to destroy.

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <liburing.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"

namespace fcvm::io {

struct EventLoopOptions {
  unsigned entries = 256;  // submission queue size (completion queue is 2x)
  // IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, falling back to
  // default flags if the kernel refuses them.
  bool defer_taskrun = true;
  std::string name = "fcvm-io";  // thread name (15 chars max)
};

// Identifies one submitted operation; 0 is never a valid id.
using OpId = uint64_t;

class EventLoop {
 public:
  // res: the CQE's result (>= 0 success, -errno on failure; -ECANCELED after
  // a cancellation that raced with completion is never delivered).
  // flags: the CQE's flags (IORING_CQE_F_MORE while a multishot op lives).
  using Handler = std::function<void(int32_t res, uint32_t flags)>;

  // Starts the thread and creates the ring on it. Errors: the errno status of
  // io_uring_queue_init or eventfd.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(const EventLoopOptions& options = {});

  // Stops the loop (pending posted tasks still run first) and joins it.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // ---- any thread ----
  // Queues `task` for the loop thread. Returns false (and drops the task)
  // when the loop has stopped.
  bool Post(std::function<void()> task);
  // Asks the loop to exit after the tasks already posted. Idempotent.
  void RequestStop();
  // Joins the loop thread (after RequestStop). Must not be called on it.
  void Join();
  bool InLoopThread() const { return std::this_thread::get_id() == thread_id_; }
  bool degraded() const { return degraded_; }
  std::thread::id thread_id() const { return thread_id_; }

  // ---- loop thread only ----
  // Multishot poll: `handler` gets the revents mask for each readiness. The
  // loop re-arms it transparently if the kernel ends it (CQ overflow); it ends
  // only on error (handler called once with -errno and no F_MORE) or Cancel.
  OpId PollMultishot(int fd, uint32_t events, Handler handler);
  // One-shot poll.
  OpId PollOnce(int fd, uint32_t events, Handler handler);
  // Multishot accept: each CQE carries a new fd (SOCK_NONBLOCK|SOCK_CLOEXEC)
  // the handler then owns. Re-armed like PollMultishot.
  OpId AcceptMultishot(int listen_fd, Handler handler);
  // Calls `handler(-ETIME, 0)` after `after`.
  OpId Timeout(absl::Duration after, Handler handler);
  // Forgets the handler at once and asks the kernel to cancel the op.
  void Cancel(OpId id);
  // Called once per iteration after completions and tasks; returning true
  // means "I have more work": the loop then only peeks for new completions
  // instead of sleeping. Used for prefetch and retries.
  void SetBusyHook(std::function<bool()> hook) { busy_hook_ = std::move(hook); }
  // Number of live operations (for tests).
  size_t live_ops() const { return ops_.size(); }

 private:
  enum class Kind { kPollMulti, kPollOnce, kAcceptMulti, kTimeout, kInternal };
  struct Op {
    Kind kind;
    int fd = -1;
    uint32_t events = 0;
    Handler handler;  // empty once cancelled
    __kernel_timespec ts{};
  };

  explicit EventLoop(const EventLoopOptions& options) : options_(options) {}
  void ThreadMain(std::promise<absl::Status>* ready);
  io_uring_sqe* GetSqe();
  OpId Submit(std::unique_ptr<Op> op);
  void Arm(OpId id, Op& op);
  void HandleCqe(uint64_t user_data, int32_t res, uint32_t flags);
  void RunPosted();

  EventLoopOptions options_;
  std::thread thread_;
  std::thread::id thread_id_;
  io_uring ring_{};
  bool ring_ready_ = false;
  bool degraded_ = false;
  UniqueFd wake_fd_;  // eventfd polled by the ring
  OpId wake_op_ = 0;
  OpId next_id_ = 1;
  std::unordered_map<OpId, std::unique_ptr<Op>> ops_;
  std::function<bool()> busy_hook_;
  bool stop_seen_ = false;
  // Set (after the push, under mu_) when there are posted tasks or a stop
  // request: lets an iteration with nothing posted skip the mutex.
  std::atomic<bool> has_posted_{false};

  absl::Mutex mu_;
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool exited_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace fcvm::io
