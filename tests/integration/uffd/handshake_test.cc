// Every malformed handshake is rejected with a clear reason, while a good
// clone served by the same page server keeps getting byte-exact pages.

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/unix_socket.h"
#include "lib/uffd/page_server.h"
#include "tests/integration/uffd/uffd_test_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::uffd {
namespace {

using ::testing::HasSubstr;
using namespace ::fcvm::uffd::testing;

constexpr uint64_t kMemSize = 4 << 20;

std::string Region(uint64_t base, uint64_t size, uint64_t offset,
                   const std::string& ps = "\"page_size\":4096") {
  return "{\"base_host_virt_addr\":" + std::to_string(base) + ",\"size\":" + std::to_string(size) +
         ",\"offset\":" + std::to_string(offset) + "," + ps + "}";
}

enum class Fds { kUffd, kNone, kTwo, kEventfd };

struct BadCase {
  std::string name;
  std::string payload;  // sent in one message, unless split/close/silent
  Fds fds = Fds::kUffd;
  std::string expect;  // substring of the rejection reason
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  bool split = false;  // send in two parts, 100 ms apart
  bool close_first = false;
  bool silent = false;  // never send
};

std::vector<BadCase> Cases() {
  const std::string good = "[" + Region(1ull << 32, 1 << 20, 0) + "]";
  std::string huge = "[" + Region(1ull << 32, 4096, 0);
  while (huge.size() < 70 * 1024) huge += "," + Region(1ull << 33, 4096, 4096);
  huge += "]";
  return {
      {"NotJson", "hello, page server", Fds::kUffd, "not valid JSON"},
      {"ObjectNotArray", Region(1ull << 32, 4096, 0), Fds::kUffd, "expected a JSON array, got object"},
      {"EmptyArray", "[]", Fds::kUffd, "empty region array"},
      {"MissingField", "[{\"size\":4096,\"offset\":0,\"page_size\":4096}]", Fds::kUffd,
       "missing field \"base_host_virt_addr\""},
      {"MissingPageSize", "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}]", Fds::kUffd,
       "missing field \"page_size\""},
      {"NegativeNumber", "[{\"base_host_virt_addr\":4096,\"size\":-4096,\"offset\":0,\"page_size\":4096}]",
       Fds::kUffd, "\"size\" is not an unsigned integer"},
      {"StringNumber", "[{\"base_host_virt_addr\":4096,\"size\":\"4096\",\"offset\":0,\"page_size\":4096}]",
       Fds::kUffd, "\"size\" is not an unsigned integer"},
      {"FloatNumber", "[{\"base_host_virt_addr\":4096,\"size\":4096.5,\"offset\":0,\"page_size\":4096}]",
       Fds::kUffd, "\"size\" is not an unsigned integer"},
      {"SizeNotPageMultiple", "[" + Region(1ull << 32, 4097, 0) + "]", Fds::kUffd,
       "size 4097 is not a multiple of the page size"},
      {"PageSizeNotPowerOfTwo", "[" + Region(1ull << 32, 12288, 0, "\"page_size\":6144") + "]", Fds::kUffd,
       "not a power of two"},
      {"PastEndOfFile", "[" + Region(1ull << 32, 8192, kMemSize - 4096) + "]", Fds::kUffd,
       "past the end of the memory file"},
      {"OverlappingRegions",
       "[" + Region(1ull << 32, 1 << 20, 0) + "," + Region(1ull << 33, 1 << 20, 4096 * 16) + "]", Fds::kUffd,
       "overlap in the memory file"},
      {"NoFd", good, Fds::kNone, "no file descriptor"},
      {"TwoFds", good, Fds::kTwo, "2 file descriptors"},
      {"NotAUserfaultfd", good, Fds::kEventfd, "not a userfaultfd (it is anon_inode:[eventfd])"},
      {"TooLarge", huge, Fds::kUffd, "64 KiB receive buffer"},
      {"SplitAcrossTwoSends", good, Fds::kUffd, "not valid JSON", absl::StatusCode::kInvalidArgument, true},
      {"ClosedBeforeSending", "", Fds::kNone, "closed the connection before sending",
       absl::StatusCode::kUnavailable, false, true},
      {"NeverSends", "", Fds::kNone, "nothing received within", absl::StatusCode::kDeadlineExceeded, false,
       false, true},
      {"GarbageAfterJson", good + "xyz", Fds::kUffd, "not valid JSON"},
      {"NulAfterJson", good + std::string("\0xyz", 4), Fds::kUffd, "NUL byte at offset"},
  };
}

class BadHandshakeTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadHandshakeTest, RejectedWhileAGoodCloneIsServed) {
  const BadCase& c = GetParam();
  TempDir dir;
  std::string mem = dir.File("mem");
  WriteMemFile(mem, kMemSize, 3);
  ASSERT_OK_AND_ASSIGN(auto server, PageServer::Create({.threads = 2}));
  EventLog events;
  server->SetEventCallback(events.Callback());

  ListenerSpec good;
  good.socket_path = dir.File("good.sock");
  good.files.mem_file_path = mem;
  good.tag = "good";
  ASSERT_OK_AND_ASSIGN(ListenerId gid, server->AddListener(good));
  Process fake = SpawnFake(good.socket_path, mem, {"--threads=2", "--touch-delay-us=100", "--regions=2"});

  ListenerSpec bad;
  bad.socket_path = dir.File("bad.sock");
  bad.files.mem_file_path = mem;
  bad.tag = "bad";
  bad.on_failure = FailurePolicy::kDrop;  // the peer is this test process
  bad.handshake_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(ListenerId bid, server->AddListener(bad));

  ASSERT_OK_AND_ASSIGN(UniqueFd sock, ConnectUnix(bad.socket_path));
  UniqueFd uffd(MakeUserfaultfd());
  ASSERT_TRUE(uffd.valid());
  UniqueFd efd(eventfd(0, EFD_CLOEXEC));
  std::vector<int> fds;
  if (c.fds == Fds::kUffd) fds = {uffd.get()};
  if (c.fds == Fds::kTwo) fds = {uffd.get(), efd.get()};
  if (c.fds == Fds::kEventfd) fds = {efd.get()};
  if (c.close_first) {
    sock.Reset();
  } else if (c.silent) {
    // say nothing
  } else if (c.split) {
    size_t half = c.payload.size() / 2;
    ASSERT_OK(SendWithFds(sock.get(), c.payload.substr(0, half), fds));
    usleep(100000);
    (void)SendWithFds(sock.get(), c.payload.substr(half), {});  // may fail: the server hung up
  } else {
    ASSERT_OK(SendWithFds(sock.get(), c.payload, fds));
  }

  auto e = events.WaitFor([&](const SessionEvent& ev) { return ev.listener == bid; }, absl::Seconds(10));
  ASSERT_TRUE(e.has_value()) << "no event for the bad peer";
  EXPECT_EQ(e->kind, SessionEventKind::kRejected) << e->status;
  EXPECT_EQ(e->status.code(), c.code) << e->status;
  EXPECT_THAT(std::string(e->status.message()), HasSubstr(c.expect));
  EXPECT_FALSE(e->peer_killed);
  EXPECT_THAT(server->WaitPrefetchDone(bid, absl::Now() + absl::Seconds(1)),
              ::fcvm::testing::StatusIs(absl::StatusCode::kAborted));

  ExitStatus ex = WaitChild(fake);
  EXPECT_TRUE(ex.success()) << "good clone: " << ex.ToString();
  auto ge = events.WaitFor(
      [&](const SessionEvent& ev) { return ev.listener == gid && ev.kind != SessionEventKind::kReady; });
  ASSERT_TRUE(ge.has_value());
  EXPECT_EQ(ge->kind, SessionEventKind::kClosed) << ge->status;
  server->Stop();
}

INSTANTIATE_TEST_SUITE_P(All, BadHandshakeTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<BadCase>& i) { return i.param.name; });

}  // namespace
}  // namespace fcvm::uffd
