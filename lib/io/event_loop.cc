#include "lib/io/event_loop.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "spdlog/spdlog.h"

namespace fcvm::io {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(const EventLoopOptions& options) {
  std::unique_ptr<EventLoop> loop(new EventLoop(options));
  std::promise<absl::Status> ready;
  std::future<absl::Status> ready_future = ready.get_future();
  loop->thread_ = std::thread([raw = loop.get(), &ready] { raw->ThreadMain(&ready); });
  absl::Status status = ready_future.get();
  if (!status.ok()) {
    loop->thread_.join();
    return status;
  }
  return loop;
}

EventLoop::~EventLoop() {
  RequestStop();
  if (thread_.joinable()) {
    if (InLoopThread()) {
      // Destroying a loop from its own handler is a bug; detaching would leave
      // the thread running on freed memory.
      spdlog::critical("EventLoop destroyed on its own thread");
      std::abort();
    }
    thread_.join();
  }
}

void EventLoop::Join() {
  if (thread_.joinable()) thread_.join();
}

bool EventLoop::Post(std::function<void()> task) {
  bool wake;
  {
    absl::MutexLock lock(&mu_);
    if (exited_ || stopping_) return false;
    wake = posted_.empty();
    posted_.push_back(std::move(task));
    has_posted_.store(true, std::memory_order_release);
  }
  if (wake) {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
    (void)n;  // EAGAIN means the counter is already non-zero: the loop wakes anyway
  }
  return true;
}

void EventLoop::RequestStop() {
  {
    absl::MutexLock lock(&mu_);
    if (exited_ || stopping_) return;
    stopping_ = true;
    has_posted_.store(true, std::memory_order_release);
  }
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
  (void)n;
}

io_uring_sqe* EventLoop::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // Submission queue full: push what we have to the kernel and retry.
    int r = io_uring_submit(&ring_);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      spdlog::critical("io_uring_submit: {}", r);
      std::abort();  // broken ring invariant: nothing sensible to do
    }
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void EventLoop::Arm(OpId id, Op& op) {
  io_uring_sqe* sqe = GetSqe();
  switch (op.kind) {
    case Kind::kPollMulti:
    case Kind::kInternal:
      io_uring_prep_poll_multishot(sqe, op.fd, op.events);
      break;
    case Kind::kPollOnce:
      io_uring_prep_poll_add(sqe, op.fd, op.events);
      break;
    case Kind::kAcceptMulti:
      io_uring_prep_multishot_accept(sqe, op.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case Kind::kTimeout:
      io_uring_prep_timeout(sqe, &op.ts, 0, 0);
      break;
  }
  io_uring_sqe_set_data64(sqe, id);
}

OpId EventLoop::Submit(std::unique_ptr<Op> op) {
  OpId id = next_id_++;
  Arm(id, *op);
  ops_.emplace(id, std::move(op));
  return id;
}

OpId EventLoop::PollMultishot(int fd, uint32_t events, Handler handler) {
  auto op = std::make_unique<Op>(Op{Kind::kPollMulti, fd, events, std::move(handler)});
  return Submit(std::move(op));
}

OpId EventLoop::PollOnce(int fd, uint32_t events, Handler handler) {
  auto op = std::make_unique<Op>(Op{Kind::kPollOnce, fd, events, std::move(handler)});
  return Submit(std::move(op));
}

OpId EventLoop::AcceptMultishot(int listen_fd, Handler handler) {
  auto op = std::make_unique<Op>(Op{Kind::kAcceptMulti, listen_fd, 0, std::move(handler)});
  return Submit(std::move(op));
}

OpId EventLoop::Timeout(absl::Duration after, Handler handler) {
  auto op = std::make_unique<Op>(Op{Kind::kTimeout, -1, 0, std::move(handler)});
  if (after < absl::ZeroDuration()) after = absl::ZeroDuration();
  timespec ts = absl::ToTimespec(after);
  op->ts.tv_sec = ts.tv_sec;
  op->ts.tv_nsec = ts.tv_nsec;
  return Submit(std::move(op));
}

void EventLoop::Cancel(OpId id) {
  auto it = ops_.find(id);
  if (it == ops_.end() || !it->second->handler) return;
  it->second->handler = nullptr;  // never called again; entry lives until the final CQE
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_cancel64(sqe, id, 0);
  io_uring_sqe_set_data64(sqe, 0);
}

void EventLoop::HandleCqe(uint64_t user_data, int32_t res, uint32_t flags) {
  if (user_data == 0) return;  // cancel requests
  auto it = ops_.find(user_data);
  if (it == ops_.end()) return;
  Op& op = *it->second;
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  const bool multishot =
      op.kind == Kind::kPollMulti || op.kind == Kind::kAcceptMulti || op.kind == Kind::kInternal;
  if (!op.handler) {
    if (!more) ops_.erase(it);
    return;
  }
  if (op.kind == Kind::kTimeout) {
    Handler h = std::move(op.handler);
    ops_.erase(it);
    if (res == -ETIME) h(-ETIME, flags);
    return;
  }
  if (multishot) {
    if (res >= 0) {
      // Copy: the handler may cancel its own op (which clears op.handler).
      Handler h = op.handler;
      h(res, flags);
      if (!more) {
        auto again = ops_.find(user_data);
        if (again != ops_.end() && again->second->handler) {
          Arm(user_data, *again->second);
        } else if (again != ops_.end()) {
          ops_.erase(again);
        }
      }
      return;
    }
    if (more) return;  // transient error on a live multishot op
    Handler h = std::move(op.handler);
    ops_.erase(it);
    if (res != -ECANCELED) h(res, flags);
    return;
  }
  Handler h = std::move(op.handler);
  ops_.erase(it);
  if (res != -ECANCELED) h(res, flags);
}

void EventLoop::RunPosted() {
  if (!has_posted_.load(std::memory_order_acquire)) return;
  std::vector<std::function<void()>> tasks;
  {
    absl::MutexLock lock(&mu_);
    has_posted_.store(false, std::memory_order_relaxed);
    tasks.swap(posted_);
    if (stopping_) stop_seen_ = true;
  }
  for (auto& task : tasks) task();
}

void EventLoop::ThreadMain(std::promise<absl::Status>* ready) {
  thread_id_ = std::this_thread::get_id();
  pthread_setname_np(pthread_self(), options_.name.substr(0, 15).c_str());
  io_uring_params params{};
  if (options_.defer_taskrun) params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int r = io_uring_queue_init_params(options_.entries, &ring_, &params);
  if (r == -EINVAL && options_.defer_taskrun) {
    params = io_uring_params{};
    degraded_ = true;
    r = io_uring_queue_init_params(options_.entries, &ring_, &params);
  }
  if (r < 0) {
    absl::MutexLock lock(&mu_);
    exited_ = true;
    ready->set_value(ErrnoError(-r, "io_uring_queue_init"));
    return;
  }
  ring_ready_ = true;
  wake_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) {
    absl::Status st = ErrnoError("eventfd");
    io_uring_queue_exit(&ring_);
    absl::MutexLock lock(&mu_);
    exited_ = true;
    ready->set_value(st);
    return;
  }
  auto wake = std::make_unique<Op>(Op{Kind::kInternal, wake_fd_.get(), POLLIN, [this](int32_t, uint32_t) {
                                        uint64_t v;
                                        while (::read(wake_fd_.get(), &v, sizeof(v)) > 0) {
                                        }
                                      }});
  wake_op_ = Submit(std::move(wake));
  ready->set_value(absl::OkStatus());  // `ready` dies with Create's frame after this

  std::vector<io_uring_cqe> batch;
  while (true) {
    RunPosted();
    if (stop_seen_) {
      absl::MutexLock lock(&mu_);
      if (posted_.empty()) {
        exited_ = true;
        break;
      }
      continue;
    }
    bool busy = busy_hook_ ? busy_hook_() : false;
    int w = busy ? io_uring_submit_and_get_events(&ring_) : io_uring_submit_and_wait(&ring_, 1);
    if (w < 0 && w != -EINTR && w != -ETIME && w != -EAGAIN && w != -EBUSY) {
      spdlog::error("io_uring wait: {}", w);
    }
    batch.clear();
    unsigned head;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) { batch.push_back(*cqe); }
    io_uring_cq_advance(&ring_, static_cast<unsigned>(batch.size()));
    for (const io_uring_cqe& c : batch) HandleCqe(c.user_data, c.res, c.flags);
  }
  // Dropping the ring cancels every operation; handlers go with ops_.
  io_uring_queue_exit(&ring_);
  ring_ready_ = false;
  ops_.clear();
  busy_hook_ = nullptr;
  absl::MutexLock lock(&mu_);
  posted_.clear();
}

}  // namespace fcvm::io
