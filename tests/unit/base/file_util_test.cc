#include "lib/base/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;

TEST(FileUtil, AtomicWriteThenRead) {
  char dir[] = "/tmp/fcvm-file-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string nested = std::string(dir) + "/a/b";
  ASSERT_OK(MakeDirs(nested));
  std::string path = nested + "/f";
  ASSERT_OK(WriteFileAtomic(path, "one"));
  ASSERT_OK(WriteFileAtomic(path, "two"));
  ASSERT_OK_AND_ASSIGN(std::string got, ReadFile(path));
  EXPECT_EQ(got, "two");
  EXPECT_THAT(ReadFile(nested + "/missing"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(MakeDirs(path), StatusIs(absl::StatusCode::kFailedPrecondition));
  std::string cmd = std::string("rm -rf ") + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

}  // namespace
}  // namespace fcvm

namespace fcvm {
namespace {

TEST(FileUtil, RemoveTreeRemovesNestedAndDoesNotFollowLinks) {
  char dir[] = "/tmp/fcvm-rmtree-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  char keep[] = "/tmp/fcvm-keep-XXXXXX";
  ASSERT_NE(mkdtemp(keep), nullptr);
  std::string keep_file = std::string(keep) + "/precious";
  ASSERT_OK(WriteFileAtomic(keep_file, "x"));
  ASSERT_OK(MakeDirs(std::string(dir) + "/a/b/c"));
  ASSERT_OK(WriteFileAtomic(std::string(dir) + "/a/b/c/f", "y"));
  ASSERT_EQ(symlink(keep, (std::string(dir) + "/a/link").c_str()), 0);
  ASSERT_OK(RemoveTree(dir));
  EXPECT_NE(access(dir, F_OK), 0);
  EXPECT_EQ(access(keep_file.c_str(), F_OK), 0) << "followed a symlink";
  ASSERT_OK(RemoveTree(dir));  // already gone: fine
  ASSERT_OK(RemoveTree(keep));
}

}  // namespace
}  // namespace fcvm
