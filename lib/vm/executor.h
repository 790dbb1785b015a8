#pragma once

// A fixed set of worker threads for the manager's blocking work (restoring
// clones, copying disks, handling process exits), so that fan-out is bounded
// and no thread is started per VM or per event.
//
// Deadlock rule: a task may wait for tasks of ANOTHER executor that never
// waits back (clone tasks wait for disk copies on the leaf executor), never
// for tasks of its own.
//
// Thread-safe.

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fcvm::vm {

class Executor {
 public:
  Executor(std::string name, size_t threads);
  // Stop().
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `task`; false (not queued) after Stop.
  bool Submit(std::function<void()> task);
  // Runs the queued tasks, then joins the threads. Idempotent.
  void Stop();
  size_t size() const { return threads_.size(); }

 private:
  void Loop();

  const std::string name_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Counts tasks handed to an executor and waits for them all.
class TaskGroup {
 public:
  // Submits `task` to `executor`; runs it inline when the executor is
  // stopped (so that no task is silently lost).
  void Run(Executor& executor, std::function<void()> task);
  void Wait();

 private:
  void Done();
  absl::Mutex mu_;
  size_t pending_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fcvm::vm
