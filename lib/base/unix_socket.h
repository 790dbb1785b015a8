#pragma once

// Unix-domain socket helpers: listen, connect, pass fds (SCM_RIGHTS) and learn
// who the peer is. Every socket is created close-on-exec; received fds too
// (MSG_CMSG_CLOEXEC).

#include <sys/socket.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "lib/base/unique_fd.h"

namespace fcvm {

struct ListenOptions {
  int backlog = 128;
  // Applied with chmod after bind; 0 leaves the umask's choice.
  mode_t mode = 0;
  // Remove a stale socket file at `path` before binding (never another kind
  // of file: that is an AlreadyExists error).
  bool replace_stale = true;
  bool nonblocking = false;
};

// Errors: InvalidArgument when `path` does not fit in sockaddr_un; the errno
// status of socket/bind/listen otherwise.
absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, const ListenOptions& options = {});
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path);

// Sends `data` with `fds` attached (fds may be empty) in one sendmsg. A short
// send is an error (stream sockets of this size do not short-send in practice,
// and the receiver expects one message).
absl::Status SendWithFds(int sock, absl::string_view data, absl::Span<const int> fds);

struct ReceivedMessage {
  size_t bytes = 0;
  std::vector<UniqueFd> fds;
  bool control_truncated = false;  // MSG_CTRUNC: more fds were sent than fit
  bool data_truncated = false;     // MSG_TRUNC (datagram sockets)
};

// One recvmsg into `buffer`, accepting up to `max_fds` fds. bytes == 0 means
// the peer closed. Errors carry errno (EAGAIN for an empty nonblocking socket).
absl::StatusOr<ReceivedMessage> RecvWithFds(int sock, absl::Span<char> buffer, size_t max_fds, int flags = 0);

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};
absl::StatusOr<PeerCredentials> GetPeerCredentials(int sock);

// A pidfd for the peer: SO_PEERPIDFD where the kernel has it (6.5+, immune to
// pid reuse), else pidfd_open of SO_PEERCRED's pid.
absl::StatusOr<UniqueFd> GetPeerPidfd(int sock);

}  // namespace fcvm
