#include "lib/firecracker/version.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(Version, ParsesVersionOutput) {
  // What v1.14.2 prints for --version, log line included.
  ASSERT_OK_AND_ASSIGN(
      Version v, ParseVersion("Firecracker v1.14.2\n\n2026-11-27T10:30:58.956138796 "
                              "[anonymous-instance:main] Firecracker exiting successfully. exit_code=0\n"));
  EXPECT_EQ(v.major, 1);
  EXPECT_EQ(v.minor, 14);
  EXPECT_EQ(v.patch, 2);
  EXPECT_EQ(v.ToString(), "1.14.2");
}

TEST(Version, ParsesBareAndSuffixed) {
  ASSERT_OK_AND_ASSIGN(Version a, ParseVersion("1.12.0"));
  EXPECT_EQ(a, (Version{1, 12, 0, ""}));
  ASSERT_OK_AND_ASSIGN(Version b, ParseVersion("  v1.15.0-dev\n"));
  EXPECT_EQ(b.minor, 15);
  EXPECT_EQ(b.suffix, "-dev");
  EXPECT_EQ(b.ToString(), "1.15.0-dev");
}

TEST(Version, RejectsText) {
  EXPECT_THAT(ParseVersion(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseVersion("Firecracker"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseVersion("v1.14"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("v1.14")));
  // Only the first non-empty line counts: a timestamp later on is no version.
  EXPECT_THAT(ParseVersion("hello\n1.14.2\n"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseVersion("v99999999999.1.1"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Version, Ordering) {
  EXPECT_TRUE((Version{1, 11, 9, ""}) < (Version{1, 12, 0, ""}));
  EXPECT_TRUE((Version{1, 12, 0, ""}) >= kMinimumVersion);
  EXPECT_TRUE((Version{2, 0, 0, ""}) >= kMinimumVersion);
  EXPECT_FALSE((Version{0, 99, 0, ""}) >= kMinimumVersion);
}

TEST(Version, CheckSupported) {
  EXPECT_OK(CheckSupported({1, 12, 0, ""}, "fc"));
  EXPECT_OK(CheckSupported({1, 14, 2, ""}, "fc"));
  EXPECT_THAT(CheckSupported({1, 7, 0, ""}, "firecracker binary /x/fc"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("/x/fc"), HasSubstr("1.7.0"), HasSubstr("1.12.0"))));
}

}  // namespace
}  // namespace fcvm::firecracker
