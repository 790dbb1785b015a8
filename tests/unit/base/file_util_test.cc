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
