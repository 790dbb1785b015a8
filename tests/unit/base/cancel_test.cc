#include "lib/base/cancel.h"

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;

TEST(Cancel, DefaultTokenNeverEnds) {
  CancelToken t;
  EXPECT_OK(t.Check());
  EXPECT_EQ(t.deadline(), absl::InfiniteFuture());
  EXPECT_OK(t.SleepFor(absl::Milliseconds(1)));
}

TEST(Cancel, FirstCancellationWins) {
  CancelSource s;
  CancelToken t = s.token();
  EXPECT_OK(t.Check());
  s.Cancel(absl::UnavailableError("fcvmd is shutting down"));
  s.Cancel(absl::CancelledError("later"));
  EXPECT_THAT(t.Check(), StatusIs(absl::StatusCode::kUnavailable));
  CancelSource ok;
  ok.Cancel(absl::OkStatus());
  EXPECT_THAT(ok.token().Check(), StatusIs(absl::StatusCode::kCancelled));
}

TEST(Cancel, ParentsAndDeadlines) {
  CancelSource root;
  CancelSource child(root.token(), absl::Now() + absl::Hours(1));
  EXPECT_OK(child.token().Check());
  EXPECT_LT(child.token().deadline(), absl::InfiniteFuture());
  root.Cancel(absl::UnavailableError("stopping"));
  EXPECT_THAT(child.token().Check(), StatusIs(absl::StatusCode::kUnavailable));
  CancelSource expired(CancelToken(), absl::Now() - absl::Seconds(1));
  EXPECT_THAT(expired.token().Check(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The earliest deadline on the way up counts.
  CancelSource soon(CancelToken(), absl::Now() + absl::Seconds(1));
  CancelSource later(soon.token(), absl::Now() + absl::Hours(1));
  EXPECT_LE(later.token().deadline(), absl::Now() + absl::Seconds(1));
}

TEST(Cancel, SleepWakesOnCancel) {
  CancelSource s;
  std::thread canceller([&] { s.Cancel(absl::CancelledError("now")); });
  absl::Time start = absl::Now();
  EXPECT_THAT(s.token().SleepFor(absl::Seconds(30)), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  canceller.join();
}

}  // namespace
}  // namespace fcvm
