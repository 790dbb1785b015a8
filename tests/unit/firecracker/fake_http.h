#pragma once

// A minimal HTTP/1.1 server loop for tests: enough of the protocol for
// ApiClient (Content-Length bodies, several requests per connection). Used by
// the fake API server in api_client_test.cc and by the fake Firecracker in
// vmm_test.cc. No GoogleTest macros: the fake Firecracker runs outside a test.

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker::testing {

struct HttpRequest {
  std::string method, path, body, content_type;
};

struct HttpReply {
  int status = 204;
  std::string body;
  bool hang = false;  // never answer (until stopped)
  bool drop = false;  // close the connection without answering
};

namespace internal {
// True when `fd` is readable; false when `stop_fd` (if >= 0) fired first.
inline bool WaitReadable(int fd, int stop_fd) {
  struct pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
  while (poll(p, stop_fd >= 0 ? 2 : 1, -1) < 0) {
  }
  return stop_fd < 0 || (p[1].revents & POLLIN) == 0;
}
}  // namespace internal

// Accepts connections on `listen_fd` one at a time and answers each request
// with `handler`, until `stop_fd` (if >= 0) becomes readable.
inline void ServeHttp(int listen_fd, int stop_fd,
                      const std::function<HttpReply(const HttpRequest&)>& handler) {
  using internal::WaitReadable;
  while (WaitReadable(listen_fd, stop_fd)) {
    UniqueFd conn(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    std::string buf;
    while (true) {
      size_t end;
      bool closed = false;
      while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
        if (!WaitReadable(conn.get(), stop_fd)) return;
        char tmp[4096];
        ssize_t n = read(conn.get(), tmp, sizeof(tmp));
        if (n <= 0) {
          closed = true;
          break;
        }
        buf.append(tmp, static_cast<size_t>(n));
      }
      if (closed) break;
      HttpRequest req;
      size_t content_length = 0;
      std::vector<std::string> lines = absl::StrSplit(buf.substr(0, end), "\r\n");
      std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
      req.method = first[0];
      req.path = first.size() > 1 ? first[1] : "";
      for (size_t i = 1; i < lines.size(); ++i) {
        std::pair<std::string, std::string> kv = absl::StrSplit(lines[i], absl::MaxSplits(": ", 1));
        std::string key = absl::AsciiStrToLower(kv.first);
        if (key == "content-length" && !absl::SimpleAtoi(kv.second, &content_length)) return;
        if (key == "content-type") req.content_type = kv.second;
      }
      buf.erase(0, end + 4);
      while (buf.size() < content_length) {
        if (!WaitReadable(conn.get(), stop_fd)) return;
        char tmp[4096];
        ssize_t n = read(conn.get(), tmp, sizeof(tmp));
        if (n <= 0) return;
        buf.append(tmp, static_cast<size_t>(n));
      }
      req.body = buf.substr(0, content_length);
      buf.erase(0, content_length);
      HttpReply reply = handler(req);
      if (reply.drop) break;
      if (reply.hang) {
        if (stop_fd >= 0) WaitReadable(stop_fd, -1);
        return;
      }
      std::string out = absl::StrCat("HTTP/1.1 ", reply.status, " X\r\nContent-Type: application/json\r\n",
                                     "Content-Length: ", reply.body.size(), "\r\n\r\n", reply.body);
      if (write(conn.get(), out.data(), out.size()) != static_cast<ssize_t>(out.size())) break;
    }
  }
}

}  // namespace fcvm::firecracker::testing
