#pragma once

// GoogleTest helpers for absl::Status, named as in later abseil releases
// (absl_testing::IsOk / StatusIs), which Debian 12's abseil lacks.

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace fcvm::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& st = GetStatus(arg);
  if (!st.ok()) *result_listener << "status is " << st.ToString();
  return st.ok();
}

MATCHER_P(StatusIs, code, "has status code " + absl::StatusCodeToString(code)) {
  const absl::Status& st = GetStatus(arg);
  *result_listener << "status is " << st.ToString();
  return st.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "has status code " + absl::StatusCodeToString(code)) {
  const absl::Status& st = GetStatus(arg);
  *result_listener << "status is " << st.ToString();
  return st.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(st.message()), result_listener);
}

}  // namespace fcvm::testing

#define ASSERT_OK(expr) ASSERT_THAT((expr), ::fcvm::testing::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::fcvm::testing::IsOk())

// ASSERT_OK_AND_ASSIGN(lhs, expr): asserts that the StatusOr is OK and moves
// its value into lhs.
#define FCVM_TEST_CONCAT_INNER_(a, b) a##b
#define FCVM_TEST_CONCAT_(a, b) FCVM_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr)                                                     \
  auto FCVM_TEST_CONCAT_(fcvm_test_so_, __LINE__) = (rexpr);                                 \
  ASSERT_THAT(FCVM_TEST_CONCAT_(fcvm_test_so_, __LINE__).status(), ::fcvm::testing::IsOk()); \
  lhs = std::move(FCVM_TEST_CONCAT_(fcvm_test_so_, __LINE__)).value()
