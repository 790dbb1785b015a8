// fcvm-pager with the real Firecracker: one pager process serves the memory
// of several restored test guests at once. Skips without Firecracker.

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/firecracker/vmm.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::pager {
namespace {

using ::testing::HasSubstr;
using namespace fcvm::firecracker;  // NOLINT: test brevity

TEST(PagerE2e, ServesThreeFirecrackerClones) {
  std::string missing = e2e::MissingPrerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  e2e::TempDir tmp;
  ASSERT_OK_AND_ASSIGN(FirecrackerBinary bin, FirecrackerBinary::Probe(e2e::FirecrackerPath()));

  // Boot the guest, let it tick, snapshot it.
  uint64_t snap_tick = 0;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm,
                         Vmm::Launch(bin, {.vm_dir = tmp.path() + "/golden", .id = "golden"}));
    ASSERT_OK(vmm->Boot(e2e::GuestBootSpec(e2e::GuestPath())));
    ASSERT_OK(e2e::WaitForOkTicks(vmm->console(), 0, 2, 0, absl::Seconds(30)).status());
    ASSERT_OK(vmm->api().Pause());
    snap_tick = e2e::LastTick(vmm->console());
    ASSERT_OK(vmm->CreateSnapshot({SnapshotType::kFull, tmp.path() + "/vmstate", tmp.path() + "/mem"}));
    ASSERT_OK(vmm->Kill().status());
  }

  std::string sock = tmp.path() + "/pager.sock";
  std::string out_path = tmp.path() + "/pager.out";
  int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  SpawnOptions so;
  so.argv = {FCVM_PAGER_PATH, sock, tmp.path() + "/mem", "--policy", "auto"};
  so.fds = {{out, 1}, {out, 2}};
  ASSERT_OK_AND_ASSIGN(Process pager, Process::Spawn(so));
  close(out);
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  struct stat st;
  while (stat(sock.c_str(), &st) != 0) {
    ASSERT_LT(absl::Now(), deadline) << ReadFile(out_path).value_or("");
    absl::SleepFor(absl::Milliseconds(5));
  }

  std::vector<std::unique_ptr<Vmm>> clones;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Vmm> vmm,
                         Vmm::Launch(bin, {.vm_dir = tmp.path() + "/clone" + std::to_string(i),
                                           .id = "clone" + std::to_string(i)}));
    SnapshotLoad load;
    load.snapshot_path = tmp.path() + "/vmstate";
    load.backend = MemBackend::kUffd;
    load.backend_path = sock;
    load.resume_vm = true;
    ASSERT_OK(vmm->LoadSnapshot(load));
    clones.push_back(std::move(vmm));
  }
  for (auto& c : clones) {
    absl::StatusOr<e2e::Tick> tick =
        e2e::WaitForOkTicks(c->console(), 0, 2, snap_tick > 2 ? snap_tick - 2 : 0, absl::Seconds(40));
    EXPECT_OK(tick.status()) << ReadFile(out_path).value_or("");
  }
  for (auto& c : clones) ASSERT_OK(c->Kill().status());
  clones.clear();
  ASSERT_OK(pager.Signal(SIGTERM));
  ASSERT_OK_AND_ASSIGN(ExitStatus exit, pager.Wait(absl::Seconds(30)));
  EXPECT_TRUE(exit.success()) << exit.ToString();
  std::string text = ReadFile(out_path).value_or("");
  EXPECT_THAT(text, HasSubstr("3 connection(s) served"));
  EXPECT_THAT(text, HasSubstr("1 region(s) of 4 KiB pages, policy "));
  EXPECT_NE(access(sock.c_str(), F_OK), 0);
  std::vector<std::string> left = e2e::Leftovers(tmp.path());
  EXPECT_TRUE(left.empty()) << absl::StrJoin(left, "\n");
}

}  // namespace
}  // namespace fcvm::pager
