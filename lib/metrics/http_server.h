#pragma once

// A tiny HTTP/1.1 server that serves one registry's exposition at GET
// /metrics (HEAD too), answers 404 for other paths and 405 for other methods,
// and closes every connection after its one response.
//
// It listens on a TCP address (loopback only unless allowed: the endpoint has
// no authentication and no TLS, and a daemon that runs as root should not
// publish its state to the network by default) or on a Unix socket.
//
// One thread polls the listening socket and every connection (non-blocking
// sockets), so a slow client never holds up another. Each connection may send
// at most `max_request_bytes` of request head (431 past that) and must be done
// within `connection_timeout` of being accepted, response included (408 if its
// request was not complete by then); at most `max_connections` are open at
// once, and connections past that are closed at accept.
//
// Thread-safety: Start and Stop from any thread; the registry is rendered
// (and its callbacks run) on the server's thread.

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"
#include "lib/metrics/registry.h"

namespace fcvm::metrics {

// Where to listen.
//   "127.0.0.1:9464", "[::1]:9464", "localhost:9464" (127.0.0.1): TCP; port 0
//   picks a free port. "0.0.0.0:9464", "[::]:9464" or ":9464" mean every
//   interface. Host names other than localhost are refused (no DNS).
//   "unix:/run/fcvm/metrics.sock" or an absolute path: a Unix socket.
struct ListenAddress {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;  // numeric IPv4 or IPv6 (without brackets)
  int port = 0;
  std::string path;  // kUnix
  bool loopback = false;

  std::string ToString() const;  // "127.0.0.1:9464", "[::1]:9464", "unix:/path"
};

// InvalidArgument naming what is wrong.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view address);

struct MetricsServerOptions {
  std::string address;  // see ListenAddress
  // Accept a TCP address that is not loopback (127.0.0.0/8, ::1).
  bool allow_non_loopback = false;
  // Mode of a Unix socket file.
  mode_t unix_socket_mode = 0660;
  size_t max_request_bytes = 8192;
  absl::Duration connection_timeout = absl::Seconds(10);
  size_t max_connections = 32;
};

class MetricsServer {
 public:
  // Binds, listens and starts the server thread. `registry` must outlive the
  // server. Errors: InvalidArgument for a malformed address or a non-loopback
  // one without allow_non_loopback; the errno status of socket, bind or listen
  // ("bind 127.0.0.1:9464: Address already in use"); AlreadyExists when a Unix
  // socket path is taken by a file that is not a socket.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const Registry* registry,
                                                              const MetricsServerOptions& options);
  // Stop().
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Closes the listener and every connection, joins the thread and removes the
  // Unix socket file. Idempotent; must not be called from a registry callback.
  void Stop();

  // What it is bound to, with the real port: "127.0.0.1:41234", "unix:/path".
  const ListenAddress& address() const { return bound_; }
  int port() const { return bound_.port; }

 private:
  struct Connection;
  MetricsServer(const Registry* registry, const MetricsServerOptions& options)
      : registry_(registry), options_(options) {}
  void Run();
  // Builds the response to a complete request head.
  std::string Respond(absl::string_view head) const;

  const Registry* registry_;
  const MetricsServerOptions options_;
  ListenAddress bound_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;  // eventfd: Stop() wakes the thread
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace fcvm::metrics
