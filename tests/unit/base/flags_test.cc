#include "lib/base/flags.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Opts {
  std::string socket = "/default";
  bool json = false;
  int64_t count = 1;
  absl::Duration grace = absl::Seconds(5);
  std::vector<std::string> labels;
};

FlagParser MakeParser(Opts* o) {
  FlagParser p("tool [flags]");
  p.String("socket", &o->socket, "socket path", "PATH");
  p.Bool("json", &o->json, "json output");
  p.Int("count", &o->count, "how many");
  p.Duration("grace", &o->grace, "grace period");
  p.List("label", &o->labels, "labels", "K=V");
  return p;
}

TEST(FlagParser, ParsesAllKindsAndPositionals) {
  Opts o;
  FlagParser p = MakeParser(&o);
  ASSERT_OK_AND_ASSIGN(auto pos, p.Parse({"a", "--socket", "/s", "--json", "--count=3", "b", "--grace=2s",
                                          "--label", "x=1", "--label=y=2"}));
  EXPECT_THAT(pos, ElementsAre("a", "b"));
  EXPECT_EQ(o.socket, "/s");
  EXPECT_TRUE(o.json);
  EXPECT_EQ(o.count, 3);
  EXPECT_EQ(o.grace, absl::Seconds(2));
  EXPECT_THAT(o.labels, ElementsAre("x=1", "y=2"));
}

TEST(FlagParser, StopAtPositionalLeavesRestUntouched) {
  Opts o;
  FlagParser p = MakeParser(&o);
  ASSERT_OK_AND_ASSIGN(auto pos, p.Parse({"--json", "ls", "--other"}, /*stop_at_positional=*/true));
  EXPECT_THAT(pos, ElementsAre("ls", "--other"));
  EXPECT_TRUE(o.json);
}

TEST(FlagParser, ErrorsNameTheOption) {
  Opts o;
  FlagParser p = MakeParser(&o);
  EXPECT_THAT(p.Parse({"--nope"}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--nope")));
  EXPECT_THAT(p.Parse({"--count=x"}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--count")));
  EXPECT_THAT(p.Parse({"--socket"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs a value")));
  EXPECT_THAT(p.Parse({"--grace=soon"}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duration")));
  EXPECT_THAT(p.Parse({"-x"}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FlagParser, NegatedBoolAndHelp) {
  Opts o;
  o.json = true;
  FlagParser p = MakeParser(&o);
  ASSERT_OK(p.Parse({"--no-json", "--help"}).status());
  EXPECT_FALSE(o.json);
  EXPECT_TRUE(p.help_requested());
  EXPECT_THAT(p.Help(), HasSubstr("--socket PATH"));
}

TEST(FlagParser, DoubleDashEndsOptions) {
  Opts o;
  FlagParser p = MakeParser(&o);
  ASSERT_OK_AND_ASSIGN(auto pos, p.Parse({"--", "--json"}));
  EXPECT_THAT(pos, ElementsAre("--json"));
  EXPECT_FALSE(o.json);
}

}  // namespace
}  // namespace fcvm
