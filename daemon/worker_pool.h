#pragma once

// fcvmd's own worker threads. gRPC handlers never block: they post the
// blocking part of a call (the Manager's operations spawn Firecracker, wait
// for its API, copy disks) here and return at once.
//
// Thread-safety: every method may be called from any thread, including from a
// task running on the pool (Post only; Shutdown from a worker would deadlock
// and is a bug).

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fcvm::daemon {

class WorkerPool {
 public:
  // Starts `threads` workers (at least one).
  explicit WorkerPool(int threads);
  // Shutdown(kDrain).
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `run`. `on_cancel`, when set, is called instead of `run` if the
  // task is dropped by Shutdown(kCancel) before it started (so the caller can
  // still answer its client). Returns false, calling neither, once Shutdown
  // has begun.
  bool Post(std::function<void()> run, std::function<void()> on_cancel = nullptr);

  enum class Mode {
    kDrain,   // run every queued task, then stop
    kCancel,  // call the on_cancel of every task not yet started, then stop
  };
  // Stops accepting tasks, handles the queue per `mode`, waits for running
  // tasks and joins the threads. Idempotent (a later call with kCancel still
  // cancels what a concurrent drain has not started).
  void Shutdown(Mode mode);

  int size() const { return static_cast<int>(threads_.size()); }
  // Tasks queued but not started.
  size_t queued() const;
  // Tasks running now.
  size_t running() const;

 private:
  struct Task {
    std::function<void()> run;
    std::function<void()> on_cancel;
  };
  void Loop();

  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // no more Posts; workers exit when the queue is empty
  std::vector<std::thread> threads_;
  absl::Mutex join_mu_;  // serialises concurrent Shutdown calls
};

}  // namespace fcvm::daemon
