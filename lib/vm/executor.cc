#include "lib/vm/executor.h"

#include <pthread.h>

#include <utility>

namespace fcvm::vm {

Executor::Executor(std::string name, size_t threads) : name_(std::move(name)) {
  if (threads == 0) threads = 1;
  for (size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Loop(); });
    pthread_setname_np(threads_.back().native_handle(), name_.substr(0, 15).c_str());
  }
}

Executor::~Executor() { Stop(); }

bool Executor::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void Executor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void Executor::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Executor* e)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->stopping_ || !e->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping, and everything queued has run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void TaskGroup::Run(Executor& executor, std::function<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    ++pending_;
  }
  auto wrapped = [this, task = std::move(task)] {
    task();
    Done();
  };
  if (!executor.Submit(wrapped)) wrapped();
}

void TaskGroup::Done() {
  absl::MutexLock lock(&mu_);
  --pending_;
}

void TaskGroup::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](size_t* n) { return *n == 0; }, &pending_));
}

}  // namespace fcvm::vm
