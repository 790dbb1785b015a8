#include "lib/firecracker/uid_pool.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

MATCHER_P(Holds, value, absl::StrCat("is OK and holds ", value)) {
  if (!arg.ok()) *result_listener << "status is " << arg.status().ToString();
  return arg.ok() && *arg == value;
}

class UidPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/fc-uids-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/uids.json";
  }
  void TearDown() override { EXPECT_OK(RemoveTree(dir_)); }

  std::string dir_;
  std::string path_;
};

TEST_F(UidPoolTest, DefaultRange) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_));
  EXPECT_EQ(pool->range().base, 1879048192u);
  EXPECT_EQ(pool->range().count, 65536u);
  ASSERT_OK_AND_ASSIGN(uint32_t a, pool->Lease("a"));
  EXPECT_EQ(a, 1879048192u);
}

TEST_F(UidPoolTest, LeasesAreUniquePersistedAndIdempotent) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 1000, .count = 3}));
  ASSERT_OK_AND_ASSIGN(uint32_t a, pool->Lease("a"));
  ASSERT_OK_AND_ASSIGN(uint32_t b, pool->Lease("b"));
  EXPECT_EQ(a, 1000u);
  EXPECT_EQ(b, 1001u);
  EXPECT_THAT(pool->Lease("a"), Holds(1000u));  // same owner, same id
  ASSERT_OK_AND_ASSIGN(uint32_t c, pool->Lease("c"));
  EXPECT_EQ(c, 1002u);
  EXPECT_THAT(pool->Lease("d"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("all 3 ids")));
  EXPECT_THAT(pool->Lookup("b"), Holds(1001u));
  EXPECT_THAT(pool->Lookup("d"), StatusIs(absl::StatusCode::kNotFound));
  // On disk, 0600, before Lease returned.
  ASSERT_OK_AND_ASSIGN(std::string text, ReadFile(path_));
  EXPECT_THAT(text, HasSubstr("\"c\": 1002"));
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THAT(pool->Lease(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(UidPoolTest, ReleasedIdsAreReusedAsLateAsPossible) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 1000, .count = 4}));
  for (const char* o : {"a", "b", "c"}) ASSERT_OK(pool->Lease(o).status());
  ASSERT_OK(pool->Release("a"));
  ASSERT_OK(pool->Release("a"));  // nothing held: OK
  // Next-fit: 1003 first, then wrap around to the released 1000.
  EXPECT_THAT(pool->Lease("d"), Holds(1003u));
  EXPECT_THAT(pool->Lease("e"), Holds(1000u));
  EXPECT_THAT(pool->Lease("f"), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(UidPoolTest, RestartKeepsLeasesAndTheNextPosition) {
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 1000, .count = 10}));
    ASSERT_OK(pool->Lease("a").status());
    ASSERT_OK(pool->Lease("b").status());
    ASSERT_OK(pool->Release("a"));
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 1000, .count = 10}));
  EXPECT_THAT(pool->All(), ElementsAre(::testing::Pair("b", 1001u)));
  // A restarted daemon never hands out a live VM's id, nor the one just freed.
  EXPECT_THAT(pool->Lease("c"), Holds(1002u));
}

TEST_F(UidPoolTest, ReconcileDropsLeasesOfGoneVms) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 1000, .count = 10}));
  for (const char* o : {"a", "b", "c"}) ASSERT_OK(pool->Lease(o).status());
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> dropped, pool->Reconcile({"b", "not-leased"}));
  EXPECT_THAT(dropped, ElementsAre("a", "c"));
  EXPECT_THAT(pool->All(), ElementsAre(::testing::Pair("b", 1001u)));
  pool.reset();
  ASSERT_OK_AND_ASSIGN(pool, UidPool::Open(path_, {.base = 1000, .count = 10}));
  EXPECT_THAT(pool->All(), ElementsAre(::testing::Pair("b", 1001u)));
}

TEST_F(UidPoolTest, OneOwnerAtATime) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_));
  EXPECT_THAT(UidPool::Open(path_).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use by another process")));
  // Another process too.
  pid_t child = fork();
  if (child == 0)
    _exit(UidPool::Open(path_).status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  pool.reset();
  EXPECT_OK(UidPool::Open(path_).status());
}

TEST_F(UidPoolTest, ConcurrentLeasesAreUnique) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<UidPool> pool, UidPool::Open(path_, {.base = 5000, .count = 1000}));
  constexpr int kThreads = 8, kEach = 50;
  std::vector<std::vector<uint32_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        absl::StatusOr<uint32_t> id = pool->Lease(absl::StrCat("vm-", t, "-", i));
        if (id.ok()) got[t].push_back(*id);
        // Half are released again at once, while the others lease.
        if (i % 2 == 1) {
          EXPECT_OK(pool->Release(absl::StrCat("vm-", t, "-", i)));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<uint32_t> all;
  size_t total = 0;
  for (const auto& v : got) {
    total += v.size();
    all.insert(v.begin(), v.end());
  }
  EXPECT_EQ(total, size_t{kThreads * kEach});
  EXPECT_EQ(all.size(), total) << "an id was handed out twice";  // 400 leases fit in 1000 without reuse
  EXPECT_EQ(pool->All().size(), size_t{kThreads * kEach / 2});
  pool.reset();
  ASSERT_OK_AND_ASSIGN(pool, UidPool::Open(path_, {.base = 5000, .count = 1000}));
  EXPECT_EQ(pool->All().size(), size_t{kThreads * kEach / 2});
}

TEST_F(UidPoolTest, BadRangesAndFiles) {
  EXPECT_THAT(UidPool::Open(path_, {.base = 0, .count = 10}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(UidPool::Open(path_, {.base = 65000, .count = 1000}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("65534")));
  EXPECT_THAT(UidPool::Open(path_, {.base = 0xfffffff0u, .count = 16}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(UidPool::Open(path_, {.base = 1000, .count = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));

  std::ofstream(path_) << "{not json";
  EXPECT_THAT(UidPool::Open(path_).status(), StatusIs(absl::StatusCode::kDataLoss));
  std::ofstream(path_) << R"({"leases": {"a": 1000, "b": 1000}})";
  EXPECT_THAT(UidPool::Open(path_, {.base = 1000, .count = 10}).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("twice")));
  // Shrinking the range under a live lease would hand its id out again.
  std::ofstream(path_) << R"({"leases": {"a": 1005}})";
  EXPECT_THAT(UidPool::Open(path_, {.base = 1000, .count = 5}).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("a=1005")));
  EXPECT_OK(UidPool::Open(path_, {.base = 1000, .count = 6}).status());
}

}  // namespace
}  // namespace fcvm::firecracker
