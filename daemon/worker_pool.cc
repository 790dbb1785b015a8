#include "daemon/worker_pool.h"

#include <utility>

namespace fcvm::daemon {

WorkerPool::WorkerPool(int threads) {
  if (threads < 1) threads = 1;
  threads_.reserve(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() { Shutdown(Mode::kDrain); }

bool WorkerPool::Post(std::function<void()> run, std::function<void()> on_cancel) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  queue_.push_back(Task{std::move(run), std::move(on_cancel)});
  return true;
}

void WorkerPool::Loop() {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkerPool* p) { return p->stopping_ || !p->queue_.empty(); }, this));
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    task.run();
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

void WorkerPool::Shutdown(Mode mode) {
  std::deque<Task> cancelled;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (mode == Mode::kCancel) cancelled.swap(queue_);
  }
  // Outside the lock: a cancel callback may Post (which then fails) or take
  // its own locks.
  for (Task& task : cancelled) {
    if (task.on_cancel) task.on_cancel();
  }
  absl::MutexLock join(&join_mu_);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

size_t WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

size_t WorkerPool::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

}  // namespace fcvm::daemon
