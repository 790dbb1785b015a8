#include "cli/vsock.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"

namespace fcvm::cli {

absl::StatusOr<UniqueFd> VsockConnect(const std::string& uds_path, uint32_t port, absl::Duration timeout) {
  absl::StatusOr<UniqueFd> sock = ConnectUnix(uds_path);
  if (!sock.ok()) return Annotate(sock.status(), absl::StrCat("vsock ", uds_path));
  const std::string request = absl::StrCat("CONNECT ", port, "\n");
  if (send(sock->get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return ErrnoError(absl::StrCat("vsock ", uds_path, ": send CONNECT"));
  }
  // The answer line, read a byte at a time so nothing of the stream after it
  // is consumed.
  const absl::Time deadline = absl::Now() + timeout;
  std::string line;
  while (line.empty() || line.back() != '\n') {
    struct pollfd p = {sock->get(), POLLIN, 0};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    int r = left > 0 ? poll(&p, 1, static_cast<int>(left)) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("poll");
    if (r == 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          "vsock ", uds_path, ": no answer from guest port ", port, " within ", absl::FormatDuration(timeout),
          ": nothing listens there, or the guest has no vsock driver"));
    }
    char c;
    ssize_t n = read(sock->get(), &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("vsock ", uds_path, ": guest port ", port,
                                                 " refused the connection (nothing listens there)"));
    }
    line.push_back(c);
    if (line.size() > 64) break;
  }
  absl::string_view answer = absl::StripSuffix(line, "\n");
  uint32_t host_port = 0;
  if (!absl::ConsumePrefix(&answer, "OK ") || !absl::SimpleAtoi(answer, &host_port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("vsock ", uds_path, ": unexpected answer to CONNECT: \"", absl::CEscape(line), "\""));
  }
  return sock;
}

absl::Status PumpVsock(int sock, int in, int out) {
  bool in_open = true;
  char buf[64 * 1024];
  while (true) {
    struct pollfd p[2] = {{sock, POLLIN, 0}, {in_open ? in : -1, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll");
    }
    if (p[0].revents != 0) {
      ssize_t n = read(sock, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return absl::OkStatus();  // the guest closed it
      for (ssize_t done = 0; done < n;) {
        ssize_t w = write(out, buf + done, static_cast<size_t>(n - done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return ErrnoError("write stdout");
        done += w;
      }
    }
    if (in_open && p[1].revents != 0) {
      ssize_t n = read(in, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        in_open = false;
        shutdown(sock, SHUT_WR);
        continue;
      }
      for (ssize_t done = 0; done < n;) {
        ssize_t w = send(sock, buf + done, static_cast<size_t>(n - done), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return ErrnoError("send to the guest");
        done += w;
      }
    }
  }
}

}  // namespace fcvm::cli
