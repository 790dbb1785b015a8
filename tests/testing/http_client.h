#pragma once

// A minimal HTTP client for tests: raw exchanges over TCP or a Unix socket,
// for servers that close the connection after their response (fcvm's metrics
// endpoint; any server asked with HTTP/1.0, such as Prometheus).

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"

namespace fcvm::testing {

// A blocking connected socket. `address`: "127.0.0.1:PORT", "[::1]:PORT" or
// "unix:/path".
absl::StatusOr<UniqueFd> ConnectTo(const std::string& address);

// Writes all of `data`. Errors carry errno.
absl::Status WriteAll(int fd, absl::string_view data);

// Reads until the peer closes. DeadlineExceeded after `timeout`, with what was
// read so far in the message's size.
absl::StatusOr<std::string> ReadUntilClosed(int fd, absl::Duration timeout);

// Sends `request` verbatim on a new connection and returns every byte the
// server sent until it closed.
absl::StatusOr<std::string> HttpExchange(const std::string& address, absl::string_view request,
                                         absl::Duration timeout = absl::Seconds(10));

struct HttpResponse {
  int status = 0;
  std::string headers;  // raw header lines, CRLF-separated
  std::string body;
  // Value of the first header named `name` (case-insensitive), "" if absent.
  std::string Header(absl::string_view name) const;
};

// Parses a whole response (status line, headers, body; Content-Length is not
// required since the connection ended it). InvalidArgument if malformed.
absl::StatusOr<HttpResponse> ParseHttpResponse(absl::string_view raw);

// GET `path` with HTTP/1.0, so that the server neither keeps the connection
// open nor uses chunked encoding.
absl::StatusOr<HttpResponse> HttpGet(const std::string& address, const std::string& path,
                                     absl::Duration timeout = absl::Seconds(10));

}  // namespace fcvm::testing
