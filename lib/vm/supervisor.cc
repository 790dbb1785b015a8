#include "lib/vm/supervisor.h"

#include <poll.h>

#include <future>
#include <utility>

#include "lib/base/logging.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

absl::StatusOr<std::unique_ptr<Supervisor>> Supervisor::Create(Executor* executor) {
  io::EventLoopOptions o;
  o.name = "fcvm-supervise";
  o.entries = 64;
  absl::StatusOr<std::unique_ptr<io::EventLoop>> loop = io::EventLoop::Create(o);
  if (!loop.ok()) return loop.status();
  return std::unique_ptr<Supervisor>(new Supervisor(*std::move(loop), executor));
}

Supervisor::~Supervisor() { Stop(); }

uint64_t Supervisor::Watch(int pidfd, std::function<void(uint64_t)> on_exit) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return 0;
    id = next_id_++;
    ops_[id] = 0;
  }
  bool posted = loop_->Post([this, id, pidfd, on_exit = std::move(on_exit)]() mutable {
    absl::MutexLock lock(&mu_);
    auto it = ops_.find(id);
    if (it == ops_.end()) return;  // unwatched before the loop got to it
    it->second = loop_->PollOnce(pidfd, POLLIN, [this, id, on_exit = std::move(on_exit)](int32_t, uint32_t) {
      {
        absl::MutexLock lock(&mu_);
        if (ops_.erase(id) == 0) return;
      }
      if (!executor_->Submit([on_exit, id] { on_exit(id); }))
        spdlog::warn("supervisor: exit of watch {} not handled (stopping)", id);
    });
  });
  if (!posted) {
    absl::MutexLock lock(&mu_);
    ops_.erase(id);
    return 0;
  }
  return id;
}

void Supervisor::Unwatch(uint64_t id) {
  if (id == 0) return;
  io::OpId op = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    op = it->second;  // 0 when the loop has not armed it yet: it then never will
    ops_.erase(it);
  }
  // Cancel the poll on the loop thread and wait for it, so that the caller
  // may close the pidfd as soon as this returns.
  std::promise<void> done;
  std::future<void> cancelled = done.get_future();
  if (loop_->Post([this, op, &done] {
        if (op != 0) loop_->Cancel(op);
        done.set_value();
      })) {
    cancelled.wait();
  }
}

void Supervisor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    ops_.clear();
  }
  loop_->RequestStop();
  loop_->Join();
}

size_t Supervisor::watching() const {
  absl::MutexLock lock(&mu_);
  return ops_.size();
}

}  // namespace fcvm::vm
