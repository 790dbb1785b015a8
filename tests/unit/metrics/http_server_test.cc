#include "lib/metrics/http_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/status.h"
#include "lib/metrics/process_metrics.h"
#include "tests/testing/http_client.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::metrics {
namespace {

using ::fcvm::testing::ConnectTo;
using ::fcvm::testing::HttpExchange;
using ::fcvm::testing::HttpGet;
using ::fcvm::testing::HttpResponse;
using ::fcvm::testing::ParseHttpResponse;
using ::fcvm::testing::ReadUntilClosed;
using ::fcvm::testing::StatusIs;
using ::fcvm::testing::WriteAll;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(ListenAddressTest, Parses) {
  struct Case {
    const char* in;
    ListenAddress::Kind kind;
    std::string host;
    int port;
    std::string path;
    bool loopback;
    std::string text;
  };
  using K = ListenAddress::Kind;
  for (const Case& c : std::vector<Case>{
           {"127.0.0.1:9464", K::kTcp, "127.0.0.1", 9464, "", true, "127.0.0.1:9464"},
           {"127.1.2.3:0", K::kTcp, "127.1.2.3", 0, "", true, "127.1.2.3:0"},
           {"localhost:80", K::kTcp, "127.0.0.1", 80, "", true, "127.0.0.1:80"},
           {"[::1]:9464", K::kTcp, "::1", 9464, "", true, "[::1]:9464"},
           {"[::ffff:127.0.0.1]:1", K::kTcp, "::ffff:127.0.0.1", 1, "", true, "[::ffff:127.0.0.1]:1"},
           {"0.0.0.0:9464", K::kTcp, "0.0.0.0", 9464, "", false, "0.0.0.0:9464"},
           {":9464", K::kTcp, "0.0.0.0", 9464, "", false, "0.0.0.0:9464"},
           {"[::]:9464", K::kTcp, "::", 9464, "", false, "[::]:9464"},
           {"192.0.2.1:65535", K::kTcp, "192.0.2.1", 65535, "", false, "192.0.2.1:65535"},
           {"unix:/run/fcvm/metrics.sock", K::kUnix, "", 0, "/run/fcvm/metrics.sock", true,
            "unix:/run/fcvm/metrics.sock"},
           {"/tmp/m.sock", K::kUnix, "", 0, "/tmp/m.sock", true, "unix:/tmp/m.sock"},
       }) {
    SCOPED_TRACE(c.in);
    ASSERT_OK_AND_ASSIGN(ListenAddress a, ParseListenAddress(c.in));
    EXPECT_EQ(a.kind, c.kind);
    EXPECT_EQ(a.host, c.host);
    EXPECT_EQ(a.port, c.port);
    EXPECT_EQ(a.path, c.path);
    EXPECT_EQ(a.loopback, c.loopback);
    EXPECT_EQ(a.ToString(), c.text);
  }
  for (const char* bad : {"", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:x", "::1:9464",
                          "[::1]9464", "example.com:9464", "unix:", "300.0.0.1:1"}) {
    EXPECT_THAT(ParseListenAddress(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(counter_,
                         registry_.AddCounter({.name = "test_requests_total", .help = "Requests."}));
    counter_->Add(42);
  }

  std::unique_ptr<MetricsServer> StartTcp(MetricsServerOptions options = {}) {
    if (options.address.empty()) options.address = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<MetricsServer>> s = MetricsServer::Start(&registry_, options);
    EXPECT_OK(s);
    if (!s.ok()) return nullptr;
    return std::move(*s);
  }

  absl::StatusOr<HttpResponse> Exchange(const MetricsServer& s, absl::string_view request) {
    ASSIGN_OR_RETURN(std::string raw, HttpExchange(s.address().ToString(), request));
    return ParseHttpResponse(raw);
  }

  Registry registry_;
  Counter* counter_ = nullptr;
};

TEST_F(MetricsServerTest, ServesTheExpositionOverTcp) {
  auto server = StartTcp();
  ASSERT_NE(server, nullptr);
  EXPECT_GT(server->port(), 0);
  EXPECT_EQ(server->address().ToString(), absl::StrCat("127.0.0.1:", server->port()));
  for (const char* version : {"HTTP/1.1", "HTTP/1.0"}) {
    ASSERT_OK_AND_ASSIGN(
        HttpResponse r,
        Exchange(*server, absl::StrCat("GET /metrics ", version, "\r\nHost: x\r\nAccept: */*\r\n\r\n")));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.Header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_EQ(r.body,
              "# HELP test_requests_total Requests.\n# TYPE test_requests_total counter\n"
              "test_requests_total 42\n");
    EXPECT_EQ(r.Header("Content-Length"), std::to_string(r.body.size()));
    EXPECT_EQ(r.Header("Connection"), "close");
  }
  // Every scrape renders anew; a query string is ignored; bare LF line ends.
  counter_->Increment();
  ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(*server, "GET /metrics?x=1 HTTP/1.1\nHost: x\n\n"));
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("test_requests_total 43\n"));
}

TEST_F(MetricsServerTest, HeadHasHeadersOnly) {
  auto server = StartTcp();
  ASSERT_NE(server, nullptr);
  ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(*server, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "");
  EXPECT_EQ(r.Header("Content-Length"), std::to_string(registry_.Render().size()));
}

TEST_F(MetricsServerTest, AnswersErrors) {
  auto server = StartTcp();
  ASSERT_NE(server, nullptr);
  struct Case {
    const char* request;
    int status;
  };
  for (const Case& c : std::vector<Case>{
           {"GET / HTTP/1.1\r\n\r\n", 404},
           {"GET /metrics/x HTTP/1.1\r\n\r\n", 404},
           {"GET /favicon.ico HTTP/1.0\r\n\r\n", 404},
           {"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405},
           {"DELETE /metrics HTTP/1.1\r\n\r\n", 405},
           {"hello\r\n\r\n", 400},
           {"GET /metrics\r\n\r\n", 400},
           {"GET  /metrics HTTP/1.1\r\n\r\n", 400},
           {"GET /metrics FTP/1.0\r\n\r\n", 400},
           {"GET /metrics HTTP/2.0\r\n\r\n", 505},
       }) {
    SCOPED_TRACE(c.request);
    ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(*server, c.request));
    EXPECT_EQ(r.status, c.status);
    EXPECT_THAT(r.body, StartsWith(std::to_string(c.status)));
    EXPECT_THAT(r.body, ::testing::Not(HasSubstr("test_requests_total")));
    if (c.status == 405) {
      EXPECT_EQ(r.Header("Allow"), "GET, HEAD");
    }
  }
}

TEST_F(MetricsServerTest, RefusesOversizeRequests) {
  auto server = StartTcp({.max_request_bytes = 1024});
  ASSERT_NE(server, nullptr);
  // A head just under the limit is served.
  std::string ok = absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ", std::string(900, 'a'), "\r\n\r\n");
  ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(*server, ok));
  EXPECT_EQ(r.status, 200);
  // 256 KiB of header without an end: 431, and the server keeps reading (and
  // dropping) what the client still sends so that the answer arrives.
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, ConnectTo(server->address().ToString()));
  ASSERT_OK(
      WriteAll(fd.get(), absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ", std::string(256 * 1024, 'b'))));
  ASSERT_EQ(shutdown(fd.get(), SHUT_WR), 0);
  ASSERT_OK_AND_ASSIGN(std::string raw, ReadUntilClosed(fd.get(), absl::Seconds(10)));
  ASSERT_OK_AND_ASSIGN(HttpResponse big, ParseHttpResponse(raw));
  EXPECT_EQ(big.status, 431);
}

TEST_F(MetricsServerTest, SlowClientsAreCutOffWithoutHoldingOthers) {
  const absl::Duration timeout = absl::Seconds(1);
  auto server = StartTcp({.connection_timeout = timeout});
  ASSERT_NE(server, nullptr);
  const std::string addr = server->address().ToString();
  absl::Time start = absl::Now();
  // One client starts a request and stalls, another connects and says nothing.
  ASSERT_OK_AND_ASSIGN(UniqueFd partial, ConnectTo(addr));
  ASSERT_OK(WriteAll(partial.get(), "GET /metr"));
  ASSERT_OK_AND_ASSIGN(UniqueFd silent, ConnectTo(addr));
  // Meanwhile others are served.
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(HttpResponse r, HttpGet(addr, "/metrics"));
    EXPECT_EQ(r.status, 200);
  }
  // The stalled ones are closed once their time is up, not before.
  ASSERT_OK_AND_ASSIGN(std::string partial_got, ReadUntilClosed(partial.get(), absl::Seconds(10)));
  EXPECT_THAT(partial_got, StartsWith("HTTP/1.1 408 Request Timeout\r\n"));
  ASSERT_OK_AND_ASSIGN(std::string silent_got, ReadUntilClosed(silent.get(), absl::Seconds(10)));
  EXPECT_EQ(silent_got, "");
  EXPECT_GE(absl::Now() - start, timeout - absl::Milliseconds(5));
}

TEST_F(MetricsServerTest, ClientThatNeverReadsIsCutOff) {
  // The first scrape answers ~9 MiB (twice what the kernel buffers for one TCP
  // socket by default), later ones a line; the first goes to a client that
  // does not read. The server gives up on it at the deadline instead of
  // waiting forever, and serves others meanwhile.
  std::atomic<int> calls{0};
  absl::Notification big_rendered;
  ASSERT_OK_AND_ASSIGN(
      CallbackHandle big,
      registry_.AddCallback(MetricType::kGauge,
                            {.name = "big", .help = "h", .labels = {"k"}, .max_series = 200000}, [&] {
                              std::vector<Sample> out;
                              int n = calls.fetch_add(1) == 0 ? 180000 : 1;
                              for (int i = 0; i < n; ++i)
                                out.push_back({{absl::StrCat(i, std::string(40, 'x'))}, 1});
                              if (n > 1) big_rendered.Notify();
                              return out;
                            }));
  auto server = StartTcp({.connection_timeout = absl::Seconds(1)});
  ASSERT_NE(server, nullptr);
  ASSERT_OK_AND_ASSIGN(UniqueFd stuck, ConnectTo(server->address().ToString()));
  int small = 4096;
  ASSERT_EQ(setsockopt(stuck.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  ASSERT_OK(WriteAll(stuck.get(), "GET /metrics HTTP/1.1\r\n\r\n"));
  big_rendered.WaitForNotification();
  // Rendering 9 MiB takes seconds under the sanitizers on a busy host: the
  // generous timeout is for that, not for the stuck client.
  ASSERT_OK_AND_ASSIGN(HttpResponse r, HttpGet(server->address().ToString(), "/metrics", absl::Seconds(60)));
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("big{k=\"0xxxx"));
  // It was reset at its deadline: reading now ends (with the reset, or with
  // EOF after what was buffered) instead of waiting for the rest.
  absl::StatusOr<std::string> got = ReadUntilClosed(stuck.get(), absl::Seconds(20));
  if (got.ok()) {
    EXPECT_THAT(*got, StartsWith("HTTP/1.1 200 OK\r\n"));
    EXPECT_LT(got->size(), 8u << 20);
  } else {
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("Connection reset by peer"));
  }
  EXPECT_EQ(calls.load(), 2);
}

TEST_F(MetricsServerTest, ClosesConnectionsPastTheLimit) {
  auto server = StartTcp({.max_connections = 2});
  ASSERT_NE(server, nullptr);
  const std::string addr = server->address().ToString();
  ASSERT_OK_AND_ASSIGN(UniqueFd a, ConnectTo(addr));
  ASSERT_OK_AND_ASSIGN(UniqueFd b, ConnectTo(addr));
  // Make sure both are accepted (served in order: a completed exchange on a
  // third connection is impossible while they hold the slots, so check that
  // a third is closed at once).
  ASSERT_OK_AND_ASSIGN(UniqueFd c, ConnectTo(addr));
  absl::StatusOr<std::string> third = ReadUntilClosed(c.get(), absl::Seconds(10));
  // Closed without an answer (a reset is as good as an EOF here).
  if (third.ok()) {
    EXPECT_EQ(*third, "");
  }
  // A held connection still gets its answer.
  ASSERT_OK(WriteAll(a.get(), "GET /metrics HTTP/1.1\r\n\r\n"));
  ASSERT_OK_AND_ASSIGN(std::string got, ReadUntilClosed(a.get(), absl::Seconds(10)));
  EXPECT_THAT(got, StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST_F(MetricsServerTest, ServesOnAUnixSocket) {
  char dir[] = "/tmp/fcvm-metrics-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = absl::StrCat(dir, "/metrics.sock");
  {
    ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<MetricsServer> server,
        MetricsServer::Start(&registry_, {.address = "unix:" + path, .unix_socket_mode = 0600}));
    EXPECT_EQ(server->address().ToString(), "unix:" + path);
    EXPECT_EQ(server->port(), 0);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_OK_AND_ASSIGN(HttpResponse r, HttpGet("unix:" + path, "/metrics"));
    EXPECT_EQ(r.status, 200);
    EXPECT_THAT(r.body, HasSubstr("test_requests_total 42\n"));
    // A second server does not take over a live socket.
    EXPECT_THAT(MetricsServer::Start(&registry_, {.address = path}).status(),
                StatusIs(absl::StatusCode::kAlreadyExists));
  }
  // Stopping removes the socket file.
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0);
  EXPECT_EQ(rmdir(dir), 0);
}

TEST_F(MetricsServerTest, RefusesNonLoopbackUnlessAllowed) {
  for (const char* addr : {"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"}) {
    EXPECT_THAT(MetricsServer::Start(&registry_, {.address = addr}).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not loopback")))
        << addr;
  }
  EXPECT_THAT(MetricsServer::Start(&registry_, {.address = "nonsense"}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Allowed, a non-local address still fails at bind (nothing listens beyond
  // loopback in this test).
  absl::Status st =
      MetricsServer::Start(&registry_, {.address = "192.0.2.1:0", .allow_non_loopback = true}).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("bind 192.0.2.1:0: Cannot assign requested address"));
}

TEST_F(MetricsServerTest, ReportsAPortInUse) {
  auto first = StartTcp();
  ASSERT_NE(first, nullptr);
  absl::Status st = MetricsServer::Start(&registry_, {.address = first->address().ToString()}).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("Address already in use"));
}

TEST_F(MetricsServerTest, StopReleasesEverything) {
  ASSERT_OK_AND_ASSIGN(int64_t fds_before, CountOpenFds());
  auto server = StartTcp();
  ASSERT_NE(server, nullptr);
  std::string addr = server->address().ToString();
  // An idle connection open at Stop is closed too.
  ASSERT_OK_AND_ASSIGN(UniqueFd idle, ConnectTo(addr));
  ASSERT_OK_AND_ASSIGN(HttpResponse r, HttpGet(addr, "/metrics"));
  EXPECT_EQ(r.status, 200);
  server->Stop();
  server->Stop();  // idempotent
  ASSERT_OK_AND_ASSIGN(std::string got, ReadUntilClosed(idle.get(), absl::Seconds(10)));
  EXPECT_EQ(got, "");
  idle.Reset();
  absl::Status refused = ConnectTo(addr).status();
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()), HasSubstr("Connection refused"));
  server.reset();
  ASSERT_OK_AND_ASSIGN(int64_t fds_after, CountOpenFds());
  EXPECT_EQ(fds_after, fds_before);
}

}  // namespace
}  // namespace fcvm::metrics
