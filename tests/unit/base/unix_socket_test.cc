#include "lib/base/unix_socket.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::StatusIs;

class UnixSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/fcvm-sock-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/s.sock";
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string dir_, path_;
};

TEST_F(UnixSocketTest, PassesFdsAndData) {
  ASSERT_OK_AND_ASSIGN(UniqueFd listener, ListenUnix(path_, {.mode = 0600}));
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_OK_AND_ASSIGN(UniqueFd client, ConnectUnix(path_));
  UniqueFd server(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());

  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  int fds[] = {wr.get()};
  ASSERT_OK(SendWithFds(client.get(), "hello", fds));
  char buf[64];
  ASSERT_OK_AND_ASSIGN(ReceivedMessage msg, RecvWithFds(server.get(), absl::MakeSpan(buf), 4));
  EXPECT_EQ(std::string(buf, msg.bytes), "hello");
  ASSERT_EQ(msg.fds.size(), 1u);
  EXPECT_FALSE(msg.control_truncated);
  EXPECT_EQ(fcntl(msg.fds[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  // The received fd is the same pipe: write through it, read from ours.
  ASSERT_EQ(write(msg.fds[0].get(), "x", 1), 1);
  char c;
  ASSERT_EQ(read(rd.get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');

  ASSERT_OK_AND_ASSIGN(PeerCredentials cred, GetPeerCredentials(server.get()));
  EXPECT_EQ(cred.pid, getpid());
  ASSERT_OK_AND_ASSIGN(UniqueFd pidfd, GetPeerPidfd(server.get()));
  EXPECT_TRUE(pidfd.valid());
}

TEST_F(UnixSocketTest, TooManyFdsSetsControlTruncated) {
  ASSERT_OK_AND_ASSIGN(UniqueFd listener, ListenUnix(path_));
  ASSERT_OK_AND_ASSIGN(UniqueFd client, ConnectUnix(path_));
  UniqueFd server(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  int fds[] = {0, 1, 2};
  ASSERT_OK(SendWithFds(client.get(), "x", fds));
  char buf[8];
  ASSERT_OK_AND_ASSIGN(ReceivedMessage msg, RecvWithFds(server.get(), absl::MakeSpan(buf), 1));
  EXPECT_TRUE(msg.control_truncated);
  EXPECT_LT(msg.fds.size(), 3u);  // the control buffer rounds up to 8 bytes
}

TEST_F(UnixSocketTest, PeerCloseReadsZeroBytes) {
  ASSERT_OK_AND_ASSIGN(UniqueFd listener, ListenUnix(path_));
  ASSERT_OK_AND_ASSIGN(UniqueFd client, ConnectUnix(path_));
  UniqueFd server(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  client.Reset();
  char buf[8];
  ASSERT_OK_AND_ASSIGN(ReceivedMessage msg, RecvWithFds(server.get(), absl::MakeSpan(buf), 1));
  EXPECT_EQ(msg.bytes, 0u);
}

TEST_F(UnixSocketTest, ReplacesStaleSocketButNotOtherFiles) {
  { ASSERT_OK_AND_ASSIGN(UniqueFd l, ListenUnix(path_)); }
  // The file of the closed listener is still there: a second listen replaces it.
  ASSERT_OK_AND_ASSIGN(UniqueFd l2, ListenUnix(path_));
  std::string regular = dir_ + "/regular";
  int fd = open(regular.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  close(fd);
  EXPECT_THAT(ListenUnix(regular), StatusIs(absl::StatusCode::kAlreadyExists));
  unlink(regular.c_str());
}

TEST_F(UnixSocketTest, PathTooLongIsInvalid) {
  EXPECT_THAT(ListenUnix(std::string(200, 'a')), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ConnectUnix(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(UnixSocketTest, ConnectWithoutListenerFails) {
  EXPECT_THAT(ConnectUnix(path_), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fcvm
