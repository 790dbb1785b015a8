#include "lib/vm/state.h"

#include <set>
#include <utility>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::vm {
namespace {

using ::fcvm::testing::StatusIs;

// The expected table, written out independently of state.cc: every pair of
// states is checked against it, so adding or losing a transition in one place
// only fails this test.
const std::set<std::pair<VmState, VmState>> kAllowed = {
    {VmState::kCreating, VmState::kRunning}, {VmState::kCreating, VmState::kPaused},
    {VmState::kCreating, VmState::kFailed},  {VmState::kCreating, VmState::kStopping},
    {VmState::kRunning, VmState::kPaused},   {VmState::kPaused, VmState::kRunning},
    {VmState::kRunning, VmState::kStopping}, {VmState::kPaused, VmState::kStopping},
    {VmState::kRunning, VmState::kStopped},  {VmState::kPaused, VmState::kStopped},
    {VmState::kRunning, VmState::kFailed},   {VmState::kPaused, VmState::kFailed},
    {VmState::kStopping, VmState::kStopped}, {VmState::kStopping, VmState::kFailed},
    {VmState::kStopped, VmState::kStopping}, {VmState::kFailed, VmState::kStopping},
};

TEST(VmState, EveryPairMatchesTheTable) {
  int checked = 0;
  for (VmState from : kAllStates) {
    for (VmState to : kAllStates) {
      bool want = kAllowed.count({from, to}) > 0;
      EXPECT_EQ(CanTransition(from, to), want) << StateName(from) << " -> " << StateName(to);
      absl::Status st = CheckTransition("vm-x", from, to, "do it");
      if (want) {
        EXPECT_OK(st);
      } else {
        EXPECT_THAT(st, StatusIs(absl::StatusCode::kFailedPrecondition));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 36);
}

TEST(VmState, ErrorNamesStateAndVerb) {
  EXPECT_THAT(CheckTransition("vm-1", VmState::kStopped, VmState::kPaused, "pause"),
              StatusIs(absl::StatusCode::kFailedPrecondition, "vm vm-1 is stopped; cannot pause"));
}

TEST(VmState, NamesRoundTrip) {
  for (VmState s : kAllStates) {
    VmState parsed;
    ASSERT_TRUE(ParseState(StateName(s), &parsed));
    EXPECT_EQ(parsed, s);
  }
  VmState ignored;
  EXPECT_FALSE(ParseState("exploded", &ignored));
}

}  // namespace
}  // namespace fcvm::vm
