// client_request_id idempotency cache: first answer wins, retries wait for a
// running first request, ids expire, the cache stays bounded.

#include "daemon/request_cache.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::daemon {
namespace {

using ::fcvm::testing::StatusIs;
using Begin = RequestCache::Begin;
using Result = RequestCache::Result;

struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1700000000);
};

RequestCache::Options Opts(FakeClock* clock, size_t max_entries = 100) {
  RequestCache::Options o;
  o.max_entries = max_entries;
  o.now = [clock] { return clock->now; };
  return o;
}

RequestCache::Waiter Collect(std::vector<Result>* out) {
  return [out](const Result& r) { out->push_back(r); };
}

TEST(RequestCacheTest, FirstRunsThenRetryGetsTheStoredAnswer) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  std::vector<Result> got;
  ASSERT_EQ(cache.Start("RunVm", "id-1", "req", Collect(&got), &r), Begin::kRun);
  cache.Finish("RunVm", "id-1", {absl::OkStatus(), "answer-1"});
  ASSERT_EQ(cache.Start("RunVm", "id-1", "req", Collect(&got), &r), Begin::kDone);
  EXPECT_OK(r.status);
  EXPECT_EQ(r.response, "answer-1");
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(cache.size(), 1u);
}

TEST(RequestCacheTest, ErrorsAreRememberedToo) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  ASSERT_EQ(cache.Start("PauseVm", "id", "req", nullptr, &r), Begin::kRun);
  cache.Finish("PauseVm", "id", {absl::FailedPreconditionError("vm x is stopped; cannot pause"), ""});
  ASSERT_EQ(cache.Start("PauseVm", "id", "req", nullptr, &r), Begin::kDone);
  EXPECT_THAT(r.status, StatusIs(absl::StatusCode::kFailedPrecondition, "vm x is stopped; cannot pause"));
}

TEST(RequestCacheTest, RetryWhileRunningWaitsForTheFirstAnswer) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  std::vector<Result> got;
  ASSERT_EQ(cache.Start("CloneSnapshot", "id", "req", Collect(&got), &r), Begin::kRun);
  ASSERT_EQ(cache.Start("CloneSnapshot", "id", "req", Collect(&got), &r), Begin::kWaiting);
  ASSERT_EQ(cache.Start("CloneSnapshot", "id", "req", Collect(&got), &r), Begin::kWaiting);
  EXPECT_TRUE(got.empty());
  cache.Finish("CloneSnapshot", "id", {absl::OkStatus(), "clones"});
  ASSERT_EQ(got.size(), 2u);
  for (const Result& g : got) {
    EXPECT_OK(g.status);
    EXPECT_EQ(g.response, "clones");
  }
  // A second Finish for the same key changes nothing.
  cache.Finish("CloneSnapshot", "id", {absl::InternalError("late"), ""});
  ASSERT_EQ(cache.Start("CloneSnapshot", "id", "req", nullptr, &r), Begin::kDone);
  EXPECT_EQ(r.response, "clones");
}

TEST(RequestCacheTest, KeyIsMethodAndId) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  ASSERT_EQ(cache.Start("PauseVm", "id", "req", nullptr, &r), Begin::kRun);
  EXPECT_EQ(cache.Start("ResumeVm", "id", "req", nullptr, &r), Begin::kRun);
  EXPECT_EQ(cache.Start("PauseVm", "other", "req", nullptr, &r), Begin::kRun);
  EXPECT_EQ(cache.size(), 3u);
}

TEST(RequestCacheTest, SameIdForADifferentRequestIsAConflict) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  ASSERT_EQ(cache.Start("RunVm", "id", "name=a", nullptr, &r), Begin::kRun);
  ASSERT_EQ(cache.Start("RunVm", "id", "name=b", nullptr, &r), Begin::kConflict);
  EXPECT_THAT(r.status, StatusIs(absl::StatusCode::kInvalidArgument,
                                 "client_request_id 'id' was already used for a different RunVm request"));
}

TEST(RequestCacheTest, EntriesExpireAfterTheTtl) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  ASSERT_EQ(cache.Start("RunVm", "id", "req", nullptr, &r), Begin::kRun);
  cache.Finish("RunVm", "id", {absl::OkStatus(), "first"});
  clock.now += absl::Hours(24) - absl::Seconds(1);
  ASSERT_EQ(cache.Start("RunVm", "id", "req", nullptr, &r), Begin::kDone);
  clock.now += absl::Seconds(1);
  EXPECT_EQ(cache.Start("RunVm", "id", "req", nullptr, &r), Begin::kRun);
}

TEST(RequestCacheTest, RunningEntriesNeverExpire) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  ASSERT_EQ(cache.Start("CloneSnapshot", "id", "req", nullptr, &r), Begin::kRun);
  clock.now += absl::Hours(48);
  EXPECT_EQ(cache.Start("CloneSnapshot", "id", "req", nullptr, &r), Begin::kWaiting);
}

TEST(RequestCacheTest, BoundedOldestFinishedFirst) {
  FakeClock clock;
  RequestCache cache(Opts(&clock, /*max_entries=*/3));
  Result r;
  ASSERT_EQ(cache.Start("RunVm", "running", "req", nullptr, &r), Begin::kRun);  // never finished
  for (int i = 0; i < 5; ++i) {
    std::string id = "id-" + std::to_string(i);
    clock.now += absl::Seconds(1);
    ASSERT_EQ(cache.Start("RunVm", id, "req", nullptr, &r), Begin::kRun);
    cache.Finish("RunVm", id, {absl::OkStatus(), id});
  }
  EXPECT_EQ(cache.size(), 3u);
  // The running one survived; the two newest finished ones are kept.
  EXPECT_EQ(cache.Start("RunVm", "running", "req", nullptr, &r), Begin::kWaiting);
  EXPECT_EQ(cache.Start("RunVm", "id-4", "req", nullptr, &r), Begin::kDone);
  EXPECT_EQ(r.response, "id-4");
  EXPECT_EQ(cache.Start("RunVm", "id-3", "req", nullptr, &r), Begin::kDone);
  EXPECT_EQ(cache.Start("RunVm", "id-0", "req", nullptr, &r), Begin::kRun);
}

TEST(RequestCacheTest, ByteBound) {
  FakeClock clock;
  RequestCache::Options o = Opts(&clock);
  o.max_bytes = 100;
  RequestCache cache(o);
  Result r;
  ASSERT_EQ(cache.Start("CloneSnapshot", "a", "", nullptr, &r), Begin::kRun);
  cache.Finish("CloneSnapshot", "a", {absl::OkStatus(), std::string(80, 'x')});
  ASSERT_EQ(cache.Start("CloneSnapshot", "b", "", nullptr, &r), Begin::kRun);
  cache.Finish("CloneSnapshot", "b", {absl::OkStatus(), std::string(80, 'y')});
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Start("CloneSnapshot", "b", "", nullptr, &r), Begin::kDone);
}

TEST(RequestCacheTest, AbandonAnswersWaitersAndForgets) {
  FakeClock clock;
  RequestCache cache(Opts(&clock));
  Result r;
  std::vector<Result> got;
  ASSERT_EQ(cache.Start("RunVm", "id", "req", nullptr, &r), Begin::kRun);
  ASSERT_EQ(cache.Start("RunVm", "id", "req", Collect(&got), &r), Begin::kWaiting);
  cache.Abandon("RunVm", "id", {absl::UnavailableError("stopping"), ""});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_THAT(got[0].status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Start("RunVm", "id", "req", nullptr, &r), Begin::kRun);
}

// A second cache on the same file (the next fcvmd) replays the first one's
// answers, OK and errors alike, refuses an id reused for another request,
// runs again what never finished, and forgets what expired. Before, a
// restarted fcvmd had forgotten every id.
TEST(RequestCacheTest, AnswersSurviveARestart) {
  ::fcvm::testing::TempDir dir;
  FakeClock clock;
  RequestCache::Options o = Opts(&clock);
  o.path = dir.path() + "/request-ids";
  {
    RequestCache first(o);
    ASSERT_OK(first.Load());  // no file yet
    Result r;
    ASSERT_EQ(first.Start("RunVm", "a", "req-a", nullptr, &r), Begin::kRun);
    first.Finish("RunVm", "a", {absl::OkStatus(), std::string("vm\0a", 4)});
    ASSERT_EQ(first.Start("PauseVm", "b", "req-b", nullptr, &r), Begin::kRun);
    first.Finish("PauseVm", "b", {absl::NotFoundError("vm ghost not found"), ""});
    ASSERT_EQ(first.Start("RunVm", "c", "req-c", nullptr, &r), Begin::kRun);  // never finishes
  }
  RequestCache second(o);
  ASSERT_OK(second.Load());
  EXPECT_EQ(second.size(), 2u);
  Result r;
  ASSERT_EQ(second.Start("RunVm", "a", "req-a", nullptr, &r), Begin::kDone);
  EXPECT_OK(r.status);
  EXPECT_EQ(r.response, std::string("vm\0a", 4));
  ASSERT_EQ(second.Start("PauseVm", "b", "req-b", nullptr, &r), Begin::kDone);
  EXPECT_THAT(r.status, StatusIs(absl::StatusCode::kNotFound, "vm ghost not found"));
  EXPECT_EQ(second.Start("PauseVm", "b", "other", nullptr, &r), Begin::kConflict);
  EXPECT_EQ(second.Start("RunVm", "c", "req-c", nullptr, &r), Begin::kRun);

  // 24 hours after the first requests they are gone, also from the file.
  clock.now += absl::Hours(25);
  ASSERT_EQ(second.Start("RunVm", "d", "req-d", nullptr, &r), Begin::kRun);
  second.Finish("RunVm", "d", {absl::OkStatus(), "d"});
  RequestCache third(o);
  ASSERT_OK(third.Load());
  EXPECT_EQ(third.size(), 1u);
  EXPECT_EQ(third.Start("RunVm", "a", "req-a", nullptr, &r), Begin::kRun);
  EXPECT_EQ(third.Start("RunVm", "d", "req-d", nullptr, &r), Begin::kDone);
}

TEST(RequestCacheTest, PersistedFileIsBounded) {
  ::fcvm::testing::TempDir dir;
  FakeClock clock;
  RequestCache::Options o = Opts(&clock);
  o.path = dir.path() + "/request-ids";
  o.max_persisted_bytes = 4096;
  RequestCache first(o);
  Result r;
  for (int i = 0; i < 10; ++i) {
    std::string id = absl::StrCat("id-", i);
    ASSERT_EQ(first.Start("CloneSnapshot", id, "", nullptr, &r), Begin::kRun);
    first.Finish("CloneSnapshot", id, {absl::OkStatus(), std::string(1000, 'x')});
  }
  EXPECT_EQ(first.size(), 10u);
  ASSERT_OK_AND_ASSIGN(std::string file, ReadFile(o.path));
  EXPECT_LE(file.size(), 4096u);
  RequestCache second(o);
  ASSERT_OK(second.Load());
  EXPECT_GE(second.size(), 3u);
  EXPECT_LT(second.size(), 10u);
  // The newest are the ones kept.
  EXPECT_EQ(second.Start("CloneSnapshot", "id-9", "", nullptr, &r), Begin::kDone);
  EXPECT_EQ(second.Start("CloneSnapshot", "id-0", "", nullptr, &r), Begin::kRun);
}

TEST(RequestCacheTest, AFileItDidNotWriteIsDataLoss) {
  ::fcvm::testing::TempDir dir;
  RequestCache::Options o;
  o.path = dir.path() + "/request-ids";
  ASSERT_OK(WriteFileAtomic(o.path, "FCVMRQ1\n\x05\x00\x00\x00ab", 0600, false));
  RequestCache cache(o);
  EXPECT_THAT(cache.Load(), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace fcvm::daemon
