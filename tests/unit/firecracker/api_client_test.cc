// ApiClient against a small fake HTTP/1.1 server on a Unix socket: the error
// paths the real Firecracker cannot be made to produce on demand (5xx,
// non-JSON bodies, a server that never answers, a dropped connection).

#include "lib/firecracker/api_client.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "lib/base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/unit/firecracker/fake_http.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

using Request = testing::HttpRequest;
using Reply = testing::HttpReply;

// Serves `handler` on a socket in a temporary directory, on its own thread,
// recording every request.
class FakeServer {
 public:
  explicit FakeServer(std::function<Reply(const Request&)> handler) : handler_(std::move(handler)) {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/fc-api-XXXXXX");
    dir_ = mkdtemp(tmpl.data());
    path_ = dir_ + "/api.sock";
    auto fd = ListenUnix(path_);
    EXPECT_OK(fd.status());
    listen_ = std::move(*fd);
    stop_.Reset(eventfd(0, EFD_CLOEXEC));
    thread_ = std::thread([this] {
      testing::ServeHttp(listen_.get(), stop_.get(), [this](const Request& r) {
        {
          absl::MutexLock l(&mu_);
          requests_.push_back(r);
        }
        return handler_(r);
      });
    });
  }
  ~FakeServer() {
    uint64_t one = 1;
    EXPECT_EQ(write(stop_.get(), &one, sizeof(one)), 8);
    thread_.join();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  std::vector<Request> requests() {
    absl::MutexLock l(&mu_);
    return requests_;
  }

 private:
  std::function<Reply(const Request&)> handler_;
  std::string dir_, path_;
  UniqueFd listen_, stop_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<Request> requests_ ABSL_GUARDED_BY(mu_);
};

TEST(ApiClient, SendsTypedRequests) {
  FakeServer server([](const Request& r) -> Reply {
    if (r.method == "GET" && r.path == "/") {
      return {200, R"({"id":"vm7","state":"Running","vmm_version":"1.14.2","app_name":"Firecracker"})"};
    }
    if (r.method == "GET" && r.path == "/version") return {200, R"({"firecracker_version":"1.14.2"})"};
    return {204, ""};
  });
  ApiClient client(server.path());
  ASSERT_OK(client.PutBootSource({.kernel_image_path = "/k", .boot_args = "x"}));
  ASSERT_OK(client.PutMachineConfig({.vcpu_count = 1, .mem_size_mib = 128}));
  ASSERT_OK(client.PutDrive({.drive_id = "d1", .path_on_host = "/d"}));
  ASSERT_OK(client.PutNetworkInterface({.iface_id = "eth0", .host_dev_name = "tap0"}));
  ASSERT_OK(client.InstanceStart());
  ASSERT_OK(client.Pause());
  ASSERT_OK(client.CreateSnapshot({.snapshot_path = "/s", .mem_file_path = "/m"}));
  ASSERT_OK(client.Resume());
  ASSERT_OK_AND_ASSIGN(InstanceInfo info, client.GetInstanceInfo());
  EXPECT_EQ(info.id, "vm7");
  EXPECT_EQ(info.state, VmState::kRunning);
  ASSERT_OK_AND_ASSIGN(Version v, client.GetVersion());
  EXPECT_EQ(v, (Version{1, 14, 2, ""}));
  ASSERT_OK(client.LoadSnapshot({.snapshot_path = "/s", .backend = MemBackend::kUffd, .backend_path = "/u"}));

  std::vector<Request> reqs = server.requests();
  ASSERT_EQ(reqs.size(), 11u);
  auto expect = [&](size_t i, const char* method, const char* path) {
    EXPECT_EQ(reqs[i].method, method) << i;
    EXPECT_EQ(reqs[i].path, path) << i;
    if (reqs[i].method != "GET") {
      EXPECT_EQ(reqs[i].content_type, "application/json");
      EXPECT_FALSE(nlohmann::json::parse(reqs[i].body, nullptr, false).is_discarded()) << reqs[i].body;
    }
  };
  expect(0, "PUT", "/boot-source");
  expect(1, "PUT", "/machine-config");
  expect(2, "PUT", "/drives/d1");
  expect(3, "PUT", "/network-interfaces/eth0");
  expect(4, "PUT", "/actions");
  expect(5, "PATCH", "/vm");
  EXPECT_EQ(reqs[5].body, R"({"state":"Paused"})");
  expect(6, "PUT", "/snapshot/create");
  expect(7, "PATCH", "/vm");
  EXPECT_EQ(reqs[7].body, R"({"state":"Resumed"})");
  expect(8, "GET", "/");
  expect(9, "GET", "/version");
  expect(10, "PUT", "/snapshot/load");
  EXPECT_TRUE(absl::StrContains(reqs[10].body, R"("backend_type":"Uffd")"));
}

TEST(ApiClient, FaultMessageBecomesTheError) {
  FakeServer server([](const Request&) -> Reply {
    return {400, R"({"fault_message":"Invalid Elf magic number"})"};
  });
  ApiClient client(server.path());
  EXPECT_THAT(
      client.InstanceStart(),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("PUT /actions"), HasSubstr("Invalid Elf magic number"), HasSubstr("400"))));
}

// The host running out of space or memory under Firecracker is the host's
// problem, not a bad request: RESOURCE_EXHAUSTED (it came back as
// INVALID_ARGUMENT before).
TEST(ApiClient, HostResourceFaultsAreResourceExhausted) {
  FakeServer server([](const Request&) -> Reply {
    return {
        400,
        R"json({"fault_message":"Cannot create snapshot: Memory: Failed to write memory file: No space left on device (os error 28)"})json"};
  });
  ApiClient client(server.path());
  EXPECT_THAT(client.CreateSnapshot({.snapshot_path = "/s", .mem_file_path = "/m"}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("No space left on device")));
}

TEST(ApiClient, ServerErrorsAndOddBodies) {
  FakeServer server([](const Request& r) -> Reply {
    if (r.path == "/") return {200, "not json"};
    if (r.path == "/version") return {200, R"({"firecracker_version":"banana"})"};
    return {500, "<html>oops</html>"};
  });
  ApiClient client(server.path());
  EXPECT_THAT(client.Pause(),
              StatusIs(absl::StatusCode::kInternal, AllOf(HasSubstr("oops"), HasSubstr("500"))));
  EXPECT_THAT(client.GetInstanceInfo(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not json")));
  EXPECT_THAT(client.GetVersion(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("banana")));
}

TEST(ApiClient, HugeResponsesAreRefused) {
  FakeServer server([](const Request&) -> Reply { return {200, std::string(2 << 20, 'x')}; });
  ApiClient client(server.path());
  EXPECT_THAT(client.GetInstanceInfo(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("larger than")));
}

TEST(ApiClient, EveryCallHasADeadline) {
  FakeServer server([](const Request&) -> Reply { return {.hang = true}; });
  ApiClient client(server.path(), absl::Seconds(30));
  absl::Time start = absl::Now();
  EXPECT_THAT(client.Pause(absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("PATCH /vm")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(ApiClient, DroppedConnectionIsUnavailable) {
  FakeServer server([](const Request&) -> Reply { return {.drop = true}; });
  ApiClient client(server.path());
  EXPECT_THAT(client.Resume(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ApiClient, MissingSocketIsUnavailable) {
  ApiClient client(absl::StrCat(::testing::TempDir(), "/no-such-dir/api.sock"));
  EXPECT_THAT(client.GetInstanceInfo(absl::Seconds(1)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no-such-dir/api.sock")));
}

}  // namespace
}  // namespace fcvm::firecracker
