// The shipped systemd unit keeps VMs alive across `systemctl stop/restart`:
// KillMode=process (systemd then signals fcvmd only), and a stop timeout
// that fcvmd's clean stop (well under a second, tests/cli_e2e) fits in.
// Reads systemd/fcvmd.service from the source tree; no systemd needed (the
// package test runs systemd-analyze verify on the installed unit).

#include <map>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

// The [Service] section's settings (the last one of a key wins, as in systemd).
std::map<std::string, std::string> ServiceSettings(const std::string& text) {
  std::map<std::string, std::string> out;
  std::string section;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line[0] == '[') {
      section = std::string(line);
      continue;
    }
    if (section != "[Service]") continue;
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    out[kv.first] = kv.second;
  }
  return out;
}

// Before: KillMode=mixed, whose final SIGKILL goes to every process left in
// the unit's cgroup, i.e. to every VM on `systemctl restart fcvmd`.
TEST(UnitFileTest, StopAndRestartLeaveTheVmsRunning) {
  ASSERT_OK_AND_ASSIGN(std::string unit, ReadFile(FCVM_SOURCE_DIR "/systemd/fcvmd.service"));
  std::map<std::string, std::string> service = ServiceSettings(unit);
  EXPECT_EQ(service["KillMode"], "process");
  EXPECT_EQ(service["KillSignal"], "SIGTERM");
  int timeout = 0;
  ASSERT_TRUE(absl::SimpleAtoi(service["TimeoutStopSec"], &timeout)) << service["TimeoutStopSec"];
  EXPECT_GE(timeout, 10);
  // The page-server sockets under the runtime directory outlive a restart.
  EXPECT_EQ(service["RuntimeDirectoryPreserve"], "yes");
}

}  // namespace
}  // namespace fcvm
