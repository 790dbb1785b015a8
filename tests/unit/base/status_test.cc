#include "lib/base/status.h"

#include <cerrno>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ErrnoError, MapsCodeAndNamesObject) {
  absl::Status st = ErrnoError(ENOENT, "open /nope");
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kNotFound, "open /nope: No such file or directory"));
  EXPECT_THAT(ErrnoError(EEXIST, "x"), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(ErrnoError(ENOSPC, "x"), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(ErrnoError(EINVAL, "x"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Annotate, PrefixesAndKeepsCode) {
  absl::Status st = Annotate(absl::NotFoundError("inner"), "outer");
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kNotFound, "outer: inner"));
  EXPECT_OK(Annotate(absl::OkStatus(), "outer"));
}

absl::StatusOr<int> Half(int v) {
  if (v % 2 != 0) return absl::InvalidArgumentError("odd");
  return v / 2;
}

absl::StatusOr<int> Quarter(int v) {
  ASSIGN_OR_RETURN(int h, Half(v));
  ASSIGN_OR_RETURN(h, Half(h));
  return h;
}

absl::Status CheckEven(int v) {
  RETURN_IF_ERROR(Half(v).status());
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("odd")));
  EXPECT_OK(CheckEven(4));
  EXPECT_THAT(CheckEven(3), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fcvm
