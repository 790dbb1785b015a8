#include "lib/metrics/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/status.h"
#include "lib/base/unix_socket.h"

namespace fcvm::metrics {
namespace {

using Clock = std::chrono::steady_clock;

bool IsLoopbackV4(const in_addr& a) { return (ntohl(a.s_addr) >> 24) == 127; }

bool IsLoopbackV6(const in6_addr& a) {
  if (IN6_IS_ADDR_LOOPBACK(&a)) return true;
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    in_addr v4;
    std::memcpy(&v4, &a.s6_addr[12], 4);
    return IsLoopbackV4(v4);
  }
  return false;
}

const char* Reason(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 505:
      return "HTTP Version Not Supported";
  }
  return "Error";
}

std::string ErrorResponse(int code, absl::string_view extra_headers = {}) {
  std::string body = absl::StrCat(code, " ", Reason(code), "\n");
  return absl::StrCat("HTTP/1.1 ", code, " ", Reason(code), "\r\nContent-Type: text/plain; charset=utf-8\r\n",
                      "Content-Length: ", body.size(), "\r\n", extra_headers, "Connection: close\r\n\r\n",
                      body);
}

// Where the request head ends (just past the blank line), or npos. Bare LF
// line ends are accepted as RFC 9112 allows.
size_t HeadEnd(absl::string_view in) {
  size_t crlf = in.find("\r\n\r\n");
  size_t lf = in.find("\n\n");
  size_t end = absl::string_view::npos;
  if (crlf != absl::string_view::npos) end = crlf + 4;
  if (lf != absl::string_view::npos) end = std::min(end, lf + 2);
  return end;
}

int MillisUntil(Clock::time_point t, Clock::time_point now) {
  if (t <= now) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
  return static_cast<int>(std::min<int64_t>(ms, 60'000));
}

}  // namespace

std::string ListenAddress::ToString() const {
  if (kind == Kind::kUnix) return absl::StrCat("unix:", path);
  if (absl::StrContains(host, ':')) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view address) {
  ListenAddress a;
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "/")) {
    absl::string_view path = address;
    absl::ConsumePrefix(&path, "unix:");
    if (path.empty()) return absl::InvalidArgumentError("metrics address: empty unix socket path");
    a.kind = ListenAddress::Kind::kUnix;
    a.path = std::string(path);
    a.loopback = true;
    return a;
  }
  absl::string_view host, port;
  if (absl::StartsWith(address, "[")) {
    size_t close = address.find("]:");
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': want [IPv6]:PORT"));
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics address '", address, "': want HOST:PORT, [IPv6]:PORT or unix:PATH"));
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (absl::StrContains(host, ':')) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics address '", address, "': put IPv6 hosts in brackets"));
    }
  }
  uint32_t port_number = 0;
  if (port.empty() || !absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': port must be 0-65535"));
  }
  a.port = static_cast<int>(port_number);
  if (host.empty()) host = "0.0.0.0";
  if (host == "localhost") host = "127.0.0.1";
  a.host = std::string(host);
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, a.host.c_str(), &v4) == 1) {
    a.loopback = IsLoopbackV4(v4);
  } else if (inet_pton(AF_INET6, a.host.c_str(), &v6) == 1) {
    a.loopback = IsLoopbackV6(v6);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': host must be a numeric IP address or localhost"));
  }
  return a;
}

struct MetricsServer::Connection {
  enum class State { kReading, kWriting, kDraining };
  UniqueFd fd;
  State state = State::kReading;
  std::string in;
  std::string out;
  size_t sent = 0;
  Clock::time_point deadline;
  bool done = false;  // close it
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const Registry* registry,
                                                                    const MetricsServerOptions& options) {
  ASSIGN_OR_RETURN(ListenAddress addr, ParseListenAddress(options.address));
  if (!addr.loopback && !options.allow_non_loopback) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address ", addr.ToString(),
                     " is not loopback; the endpoint has no authentication, so listening beyond this host "
                     "must be allowed explicitly"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer(registry, options));
  if (addr.kind == ListenAddress::Kind::kUnix) {
    // A stale socket file is replaced, a live one is not taken over.
    if (ConnectUnix(addr.path).ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("metrics socket ", addr.path, ": another server answers there"));
    }
    ASSIGN_OR_RETURN(server->listen_fd_,
                     ListenUnix(addr.path, {.mode = options.unix_socket_mode, .nonblocking = true}));
  } else {
    bool v6 = absl::StrContains(addr.host, ':');
    sockaddr_storage ss;
    std::memset(&ss, 0, sizeof(ss));
    socklen_t len;
    if (v6) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(static_cast<uint16_t>(addr.port));
      inet_pton(AF_INET6, addr.host.c_str(), &sin6->sin6_addr);
      len = sizeof(*sin6);
    } else {
      auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
      sin->sin_family = AF_INET;
      sin->sin_port = htons(static_cast<uint16_t>(addr.port));
      inet_pton(AF_INET, addr.host.c_str(), &sin->sin_addr);
      len = sizeof(*sin);
    }
    UniqueFd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return ErrnoError("socket");
    int one = 1;
    // A restarted daemon rebinds while old connections sit in TIME_WAIT.
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
      return ErrnoError("setsockopt SO_REUSEADDR");
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0) {
      return ErrnoError(absl::StrCat("bind ", addr.ToString()));
    }
    if (::listen(fd.get(), 64) < 0) return ErrnoError(absl::StrCat("listen ", addr.ToString()));
    len = sizeof(ss);
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0) return ErrnoError("getsockname");
    addr.port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    server->listen_fd_ = std::move(fd);
  }
  server->bound_ = addr;
  server->wake_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!server->wake_fd_) {
    absl::Status st = ErrnoError("eventfd");
    if (addr.kind == ListenAddress::Kind::kUnix) unlink(addr.path.c_str());
    return st;
  }
  server->thread_ = std::thread([s = server.get()] { s->Run(); });
  return server;
}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  // Cannot fail in a way that matters: the counter is far from overflowing.
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  listen_fd_.Reset();
  if (bound_.kind == ListenAddress::Kind::kUnix) unlink(bound_.path.c_str());
}

std::string MetricsServer::Respond(absl::string_view head) const {
  absl::string_view line = head.substr(0, head.find('\n'));
  if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
  std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty()) return ErrorResponse(400);
  absl::string_view method = parts[0], target = parts[1], version = parts[2];
  if (!absl::StartsWith(version, "HTTP/")) return ErrorResponse(400);
  if (version != "HTTP/1.0" && version != "HTTP/1.1") return ErrorResponse(505);
  bool head_only = method == "HEAD";
  if (method != "GET" && !head_only) return ErrorResponse(405, "Allow: GET, HEAD\r\n");
  absl::string_view path = target.substr(0, target.find('?'));
  if (path != "/metrics") return ErrorResponse(404);
  std::string body = registry_->Render();
  std::string out = absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: ", kExpositionContentType,
                                 "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  if (!head_only) out += body;
  return out;
}

void MetricsServer::Run() {
  std::vector<std::unique_ptr<Connection>> conns;
  Clock::time_point accept_paused_until{};
  std::vector<pollfd> pfds;
  while (!stopping_.load()) {
    Clock::time_point now = Clock::now();
    bool accepting = now >= accept_paused_until;
    pfds.clear();
    pfds.push_back({wake_fd_.get(), POLLIN, 0});
    pfds.push_back({accepting ? listen_fd_.get() : -1, POLLIN, 0});
    int timeout = accepting ? -1 : MillisUntil(accept_paused_until, now);
    for (const auto& c : conns) {
      short events = c->state == Connection::State::kWriting ? POLLOUT : POLLIN;
      pfds.push_back({c->fd.get(), events, 0});
      int ms = MillisUntil(c->deadline, now);
      timeout = timeout < 0 ? ms : std::min(timeout, ms);
    }
    int n = ::poll(pfds.data(), pfds.size(), timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;  // EFAULT/EINVAL/ENOMEM: nothing sensible left to do
    }
    if (pfds[0].revents != 0) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = ::read(wake_fd_.get(), &v, sizeof(v));
      continue;  // the loop condition sees stopping_
    }
    now = Clock::now();

    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& c = *conns[i];
      short revents = pfds[i + 2].revents;
      if (revents == 0) continue;
      if (c.state == Connection::State::kReading) {
        char buf[4096];
        ssize_t got = ::recv(c.fd.get(), buf, sizeof(buf), 0);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (got <= 0) {
          c.done = true;  // closed or reset before asking anything
          continue;
        }
        c.in.append(buf, static_cast<size_t>(got));
        size_t end = HeadEnd(c.in);
        if (end != std::string::npos && end <= options_.max_request_bytes) {
          c.out = Respond(absl::string_view(c.in).substr(0, end));
        } else if (c.in.size() > options_.max_request_bytes) {
          c.out = ErrorResponse(431);
        } else {
          continue;
        }
        c.in.clear();
        c.state = Connection::State::kWriting;
        revents = POLLOUT;  // try at once: usually the whole response fits
      }
      if (c.state == Connection::State::kWriting) {
        if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) continue;
        ssize_t sent = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (sent < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (sent < 0) {
          c.done = true;
          continue;
        }
        c.sent += static_cast<size_t>(sent);
        if (c.sent < c.out.size()) continue;
        // Whole response sent: stop writing, and read what the client may
        // still send until it closes, so that closing does not reset the
        // connection and destroy the response before the client read it.
        ::shutdown(c.fd.get(), SHUT_WR);
        c.out.clear();
        c.state = Connection::State::kDraining;
        c.deadline = std::min(c.deadline, now + std::chrono::seconds(1));
        continue;
      }
      if (c.state == Connection::State::kDraining) {
        char buf[4096];
        ssize_t got = ::recv(c.fd.get(), buf, sizeof(buf), 0);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (got <= 0) c.done = true;
      }
    }

    for (auto& c : conns) {
      if (c->done || now < c->deadline) continue;
      if (c->state == Connection::State::kReading && !c->in.empty()) {
        // Best effort: tell a client that started a request why it is cut off.
        std::string r = ErrorResponse(408);
        [[maybe_unused]] ssize_t s = ::send(c->fd.get(), r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      } else if (c->state == Connection::State::kWriting) {
        // A client that does not read its response: reset the connection, so
        // the kernel drops the unsent rest now instead of holding it for an
        // orphaned socket.
        linger abort{.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
      }
      c->done = true;
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const auto& c) { return c->done; }),
                conns.end());

    if (accepting && (pfds[1].revents & POLLIN) != 0) {
      while (true) {
        int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            // Out of fds: the listener would stay readable and spin the loop.
            accept_paused_until = now + std::chrono::milliseconds(100);
          }
          break;  // EAGAIN, or an aborted connection
        }
        UniqueFd owned(fd);
        if (conns.size() >= options_.max_connections) continue;  // closed at once
        auto c = std::make_unique<Connection>();
        c->fd = std::move(owned);
        c->deadline = now + absl::ToChronoMilliseconds(options_.connection_timeout);
        conns.push_back(std::move(c));
      }
    }
  }
}

}  // namespace fcvm::metrics
