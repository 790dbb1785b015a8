#include "lib/io/event_loop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <future>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::io {
namespace {

TEST(EventLoopTest, PostRunsTasksInOrderOnTheLoopThread) {
  ASSERT_OK_AND_ASSIGN(auto loop, EventLoop::Create());
  EXPECT_FALSE(loop->degraded()) << "kernel refused SINGLE_ISSUER|DEFER_TASKRUN";
  std::vector<int> seen;
  std::promise<void> done;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(loop->Post([&, i, l = loop.get()] {
      EXPECT_TRUE(l->InLoopThread());
      seen.push_back(i);
      if (i == 99) done.set_value();
    }));
  }
  done.get_future().wait();
  for (int i = 0; i < 100; ++i) EXPECT_EQ(seen[i], i);
  EXPECT_FALSE(loop->InLoopThread());
}

TEST(EventLoopTest, MultishotPollFiresRepeatedlyUntilCancelled) {
  ASSERT_OK_AND_ASSIGN(auto loop, EventLoop::Create());
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(efd, 0);
  std::atomic<int> fired{0};
  std::promise<OpId> armed;
  loop->Post([&] {
    armed.set_value(loop->PollMultishot(efd, POLLIN, [&](int32_t res, uint32_t) {
      ASSERT_GE(res, 0);
      uint64_t v;
      while (read(efd, &v, sizeof(v)) > 0) {
      }
      ++fired;
    }));
  });
  OpId id = armed.get_future().get();
  for (int i = 1; i <= 5; ++i) {
    uint64_t one = 1;
    ASSERT_EQ(write(efd, &one, sizeof(one)), 8);
    for (int spin = 0; spin < 2000 && fired.load() < i; ++spin) usleep(500);
    ASSERT_EQ(fired.load(), i);
  }
  std::promise<void> cancelled;
  loop->Post([&] {
    loop->Cancel(id);
    cancelled.set_value();
  });
  cancelled.get_future().wait();
  uint64_t one = 1;
  ASSERT_EQ(write(efd, &one, sizeof(one)), 8);
  usleep(20000);
  EXPECT_EQ(fired.load(), 5) << "a cancelled handler must never run";
  loop.reset();
  close(efd);
}

TEST(EventLoopTest, TimeoutFiresAndCancelledTimeoutDoesNot) {
  ASSERT_OK_AND_ASSIGN(auto loop, EventLoop::Create());
  std::promise<absl::Duration> fired;
  std::atomic<bool> cancelled_fired{false};
  absl::Time start = absl::Now();
  loop->Post([&] {
    loop->Timeout(absl::Milliseconds(30), [&](int32_t, uint32_t) { fired.set_value(absl::Now() - start); });
    OpId c = loop->Timeout(absl::Milliseconds(10), [&](int32_t, uint32_t) { cancelled_fired = true; });
    loop->Cancel(c);
  });
  absl::Duration took = fired.get_future().get();
  EXPECT_GE(took, absl::Milliseconds(29));
  EXPECT_FALSE(cancelled_fired.load());
}

TEST(EventLoopTest, BusyHookKeepsTheLoopSpinningUntilDone) {
  ASSERT_OK_AND_ASSIGN(auto loop, EventLoop::Create());
  std::atomic<int> calls{0};
  std::promise<void> done;
  loop->Post([&] {
    loop->SetBusyHook([&] {
      int n = ++calls;
      if (n == 1000) done.set_value();
      return n < 1000;
    });
  });
  done.get_future().wait();
  EXPECT_GE(calls.load(), 1000);
}

TEST(EventLoopTest, PostAfterStopIsRefused) {
  ASSERT_OK_AND_ASSIGN(auto loop, EventLoop::Create());
  loop->RequestStop();
  loop->Join();
  EXPECT_FALSE(loop->Post([] {}));
}

}  // namespace
}  // namespace fcvm::io
