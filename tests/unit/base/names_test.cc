#include "lib/base/names.h"

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ValidateName, AcceptsSafeNames) {
  EXPECT_OK(ValidateName("vm name", "web-1.prod_a"));
  EXPECT_OK(ValidateName("vm name", std::string(64, 'a')));
}

TEST(ValidateName, RejectsUnsafeNames) {
  const std::string bad[] = {"",       ".",
                             "..",     "a/b",
                             "../x",   "tab\there",
                             "nl\n",   std::string(65, 'a'),
                             "sp ace", std::string("nul\0x", 5)};
  for (const std::string& name : bad) {
    EXPECT_THAT(ValidateName("vm name", name),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vm name")))
        << name;
  }
}

TEST(NewId, HasPrefixAndIsUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewId("vm");
    ASSERT_EQ(id.size(), 15u);
    ASSERT_EQ(id.substr(0, 3), "vm-");
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1000u);
}

}  // namespace
}  // namespace fcvm
