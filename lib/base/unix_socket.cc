#include "lib/base/unix_socket.h"

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "lib/base/pidfd.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace fcvm {
namespace {

absl::StatusOr<sockaddr_un> MakeAddress(const std::string& path) {
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("unix socket path must be 1-", sizeof(addr.sun_path) - 1,
                                                   " bytes, got ", path.size(), ": ", path));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, const ListenOptions& options) {
  ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  int type = SOCK_STREAM | SOCK_CLOEXEC | (options.nonblocking ? SOCK_NONBLOCK : 0);
  UniqueFd fd(::socket(AF_UNIX, type, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  if (options.replace_stale) {
    struct stat st;
    if (lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return absl::AlreadyExistsError(absl::StrCat("listen ", path, ": exists and is not a socket"));
      }
      if (unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError(absl::StrCat("unlink ", path));
    }
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    return ErrnoError(absl::StrCat("bind ", path));
  }
  if (options.mode != 0 && chmod(path.c_str(), options.mode) < 0) {
    int err = errno;
    unlink(path.c_str());
    return ErrnoError(err, absl::StrCat("chmod ", path));
  }
  if (::listen(fd.get(), options.backlog) < 0) {
    int err = errno;
    unlink(path.c_str());
    return ErrnoError(err, absl::StrCat("listen ", path));
  }
  return fd;
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  int r;
  do {
    r = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ErrnoError(absl::StrCat("connect ", path));
  return fd;
}

absl::Status SendWithFds(int sock, absl::string_view data, absl::Span<const int> fds) {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return ErrnoError("sendmsg");
  if (static_cast<size_t>(sent) != data.size()) {
    return absl::UnavailableError(absl::StrCat("sendmsg: short send ", sent, " of ", data.size(), " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReceivedMessage> RecvWithFds(int sock, absl::Span<char> buffer, size_t max_fds, int flags) {
  iovec iov{buffer.data(), buffer.size()};
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (max_fds == 0 ? 1 : max_fds)));
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t got;
  do {
    got = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  if (got < 0) return ErrnoError("recvmsg");
  ReceivedMessage out;
  out.bytes = static_cast<size_t>(got);
  out.control_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  out.data_truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      out.fds.emplace_back(fd);  // owned, so extra fds are closed too
    }
  }
  return out;
}

absl::StatusOr<PeerCredentials> GetPeerCredentials(int sock) {
  ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return ErrnoError("getsockopt SO_PEERCRED");
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

absl::StatusOr<UniqueFd> GetPeerPidfd(int sock) {
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0) {
    return UniqueFd(pidfd);
  }
  ASSIGN_OR_RETURN(PeerCredentials cred, GetPeerCredentials(sock));
  if (cred.pid <= 0) return absl::NotFoundError("peer has no pid");
  int fd = PidfdOpen(cred.pid, 0);
  if (fd < 0) return ErrnoError(absl::StrCat("pidfd_open ", cred.pid));
  return UniqueFd(fd);
}

}  // namespace fcvm
