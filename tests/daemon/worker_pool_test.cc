// The daemon's worker pool: runs tasks concurrently, drains or cancels on
// shutdown, refuses work afterwards.

#include "daemon/worker_pool.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace fcvm::daemon {
namespace {

TEST(WorkerPoolTest, RunsTasksInParallel) {
  WorkerPool pool(4);
  EXPECT_EQ(pool.size(), 4);
  // Four tasks that each wait for all four to have started: only possible
  // when they run at once.
  std::atomic<int> started{0};
  absl::Notification all_started, done;
  std::atomic<int> finished{0};
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(pool.Post([&] {
      if (++started == 4) all_started.Notify();
      EXPECT_TRUE(all_started.WaitForNotificationWithTimeout(absl::Seconds(10)));
      if (++finished == 4) done.Notify();
    }));
  }
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
}

TEST(WorkerPoolTest, DrainRunsEverythingQueued) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(1);
    absl::Notification release;
    ASSERT_TRUE(pool.Post([&] { release.WaitForNotification(); }));
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(pool.Post([&] { ++ran; }, [] { FAIL() << "cancelled"; }));
    release.Notify();
    pool.Shutdown(WorkerPool::Mode::kDrain);
    EXPECT_FALSE(pool.Post([&] { ++ran; }));
  }
  EXPECT_EQ(ran.load(), 10);
}

TEST(WorkerPoolTest, CancelCallsOnCancelForQueuedTasksOnly) {
  WorkerPool pool(1);
  absl::Notification running, release;
  std::atomic<int> ran{0}, cancelled{0};
  ASSERT_TRUE(pool.Post([&] {
    running.Notify();
    release.WaitForNotification();
    ++ran;
  }));
  running.WaitForNotification();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(pool.Post([&] { ++ran; }, [&] { ++cancelled; }));
  ASSERT_TRUE(pool.Post([&] { ++ran; }));  // no on_cancel: just dropped
  EXPECT_EQ(pool.queued(), 6u);
  EXPECT_EQ(pool.running(), 1u);
  std::thread stopper([&] { pool.Shutdown(WorkerPool::Mode::kCancel); });
  // Queued tasks are cancelled at once; Shutdown then waits for the running one.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cancelled.load() < 5 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(cancelled.load(), 5);
  EXPECT_EQ(ran.load(), 0);
  release.Notify();
  stopper.join();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(cancelled.load(), 5);
  pool.Shutdown(WorkerPool::Mode::kCancel);  // idempotent
}

TEST(WorkerPoolTest, TasksMayPostMoreTasks) {
  WorkerPool pool(2);
  absl::Notification done;
  ASSERT_TRUE(pool.Post([&] { ASSERT_TRUE(pool.Post([&] { done.Notify(); })); }));
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

}  // namespace
}  // namespace fcvm::daemon
