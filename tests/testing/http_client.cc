#include "tests/testing/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"

namespace fcvm::testing {

absl::StatusOr<UniqueFd> ConnectTo(const std::string& address) {
  absl::string_view a = address;
  if (absl::ConsumePrefix(&a, "unix:")) return ConnectUnix(std::string(a));
  std::string host;
  uint32_t port = 0;
  size_t colon = a.rfind(':');
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(a.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address));
  }
  host = std::string(a.substr(0, colon));
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) host = host.substr(1, host.size() - 2);
  sockaddr_storage ss;
  std::memset(&ss, 0, sizeof(ss));
  socklen_t len;
  int family;
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) == 1) {
    family = sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*sin);
  } else if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) == 1) {
    family = sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*sin6);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("bad host in ", address));
  }
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket");
  int r;
  do {
    r = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return ErrnoError(absl::StrCat("connect ", address));
  return fd;
}

absl::Status WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("send");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadUntilClosed(int fd, absl::Duration timeout) {
  std::string out;
  absl::Time deadline = absl::Now() + timeout;
  char buf[16384];
  while (true) {
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("peer still open after ", absl::FormatDuration(timeout),
                                                      " (", out.size(), " bytes read)"));
    }
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno != EINTR) return ErrnoError("poll");
    if (r <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError("recv");
    }
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> HttpExchange(const std::string& address, absl::string_view request,
                                         absl::Duration timeout) {
  ASSIGN_OR_RETURN(UniqueFd fd, ConnectTo(address));
  RETURN_IF_ERROR(WriteAll(fd.get(), request));
  return ReadUntilClosed(fd.get(), timeout);
}

std::string HttpResponse::Header(absl::string_view name) const {
  for (absl::string_view line : absl::StrSplit(headers, "\r\n")) {
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::EqualsIgnoreCase(line.substr(0, colon), name)) {
      return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

absl::StatusOr<HttpResponse> ParseHttpResponse(absl::string_view raw) {
  size_t end = raw.find("\r\n\r\n");
  if (end == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("no end of head in ", raw.size(), " bytes: ", raw.substr(0, 200)));
  }
  absl::string_view head = raw.substr(0, end);
  size_t line_end = head.find("\r\n");
  absl::string_view status_line = head.substr(0, line_end);
  std::vector<absl::string_view> parts = absl::StrSplit(status_line, absl::MaxSplits(' ', 2));
  HttpResponse r;
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") || !absl::SimpleAtoi(parts[1], &r.status)) {
    return absl::InvalidArgumentError(absl::StrCat("bad status line: ", status_line));
  }
  if (line_end != absl::string_view::npos) r.headers = std::string(head.substr(line_end + 2));
  r.body = std::string(raw.substr(end + 4));
  return r;
}

absl::StatusOr<HttpResponse> HttpGet(const std::string& address, const std::string& path,
                                     absl::Duration timeout) {
  ASSIGN_OR_RETURN(
      std::string raw,
      HttpExchange(address, absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n"), timeout));
  return ParseHttpResponse(raw);
}

}  // namespace fcvm::testing
