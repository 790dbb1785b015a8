#include "lib/firecracker/api_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/base/status.h"

namespace fcvm::firecracker {
namespace {

absl::once_flag g_curl_init_once;
CURLcode g_curl_init_result = CURLE_OK;

// Firecracker's answers are small JSON objects; a bigger one is a bug or a
// hostile peer, and must not grow our memory without bound.
constexpr size_t kMaxResponseBytes = 1 << 20;

size_t AppendBody(char* data, size_t size, size_t nmemb, void* user) {
  auto* body = static_cast<std::string*>(user);
  if (body->size() + size * nmemb > kMaxResponseBytes) return 0;  // curl fails with CURLE_WRITE_ERROR
  body->append(data, size * nmemb);
  return size * nmemb;
}

absl::Status TransportError(CURLcode code, const char* detail, absl::string_view call,
                            const std::string& socket_path, absl::Duration timeout) {
  // curl's own text for a failed connect names "localhost port 80", which
  // is only the placeholder URL: say which socket instead.
  std::string what =
      code == CURLE_COULDNT_CONNECT
          ? absl::StrCat(call, ": cannot connect to ", socket_path, " (Firecracker not listening)")
          : absl::StrCat(call, " on ", socket_path, ": ",
                         detail[0] != '\0' ? detail : curl_easy_strerror(code));
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(
          absl::StrCat(what, " (deadline ", absl::FormatDuration(timeout), ")"));
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return absl::UnavailableError(what);
    case CURLE_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(what);
    case CURLE_WRITE_ERROR:
      return absl::ResourceExhaustedError(
          absl::StrCat(call, " on ", socket_path, ": response larger than ", kMaxResponseBytes, " bytes"));
    default:
      return absl::InternalError(what);
  }
}

}  // namespace

struct ApiClient::Curl {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  ~Curl() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    if (headers != nullptr) curl_slist_free_all(headers);
  }
};

ApiClient::ApiClient(std::string socket_path, absl::Duration default_timeout)
    : socket_path_(std::move(socket_path)), default_timeout_(default_timeout) {}

ApiClient::~ApiClient() = default;

absl::StatusOr<HttpResponse> ApiClient::Request(absl::string_view method, absl::string_view path,
                                                absl::string_view body, absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) timeout = default_timeout_;
  const std::string call = absl::StrCat(method, " ", path);
  absl::call_once(g_curl_init_once, [] { g_curl_init_result = curl_global_init(CURL_GLOBAL_NOTHING); });
  if (g_curl_init_result != CURLE_OK) {
    return absl::InternalError(absl::StrCat("curl_global_init: ", curl_easy_strerror(g_curl_init_result)));
  }

  absl::MutexLock lock(&mu_);
  if (curl_ == nullptr) {
    auto c = std::make_unique<Curl>();
    c->easy = curl_easy_init();
    if (c->easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
    for (const char* h : {"Content-Type: application/json", "Accept: application/json", "Expect:"}) {
      curl_slist* next = curl_slist_append(c->headers, h);
      if (next == nullptr) return absl::ResourceExhaustedError("curl_slist_append failed");
      c->headers = next;
    }
    curl_ = std::move(c);
  }
  CURL* easy = curl_->easy;
  // The handle is reused, so every option a request may set is set on every
  // request. The connection is not: curl re-sends a request whose reused
  // connection turns out dead, and a PUT /actions or /snapshot/load must never
  // reach Firecracker twice. A connect on a Unix socket costs microseconds.
  std::string url = absl::StrCat("http://localhost", path);
  std::string method_str(method);
  std::string response_body;
  char error[CURL_ERROR_SIZE] = {0};
  long ms = std::max<long>(1, static_cast<long>(absl::ToInt64Milliseconds(timeout)));

  curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH, socket_path_.c_str());
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, ms);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, curl_->headers);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &response_body);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(easy, CURLOPT_PROXY, "");
  curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
  if (method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, nullptr);
  } else {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method_str.c_str());
  }
  CURLcode code = curl_easy_perform(easy);
  // Nothing may point into this frame after we return.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, nullptr);
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, nullptr);
  curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, nullptr);
  if (code != CURLE_OK) return TransportError(code, error, call, socket_path_, timeout);

  HttpResponse response;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response.status);
  response.body = std::move(response_body);
  return response;
}

absl::StatusOr<std::string> ApiClient::Call(absl::string_view method, absl::string_view path,
                                            absl::string_view body, absl::Duration timeout) {
  ASSIGN_OR_RETURN(HttpResponse r, Request(method, path, body, timeout));
  if (r.status >= 200 && r.status < 300) return std::move(r.body);
  std::optional<std::string> fault = ParseFaultMessage(r.body);
  std::string message = absl::StrCat(
      method, " ", path, ": ",
      fault.has_value() ? *fault : absl::StrCat("\"", absl::CEscape(r.body.substr(0, 300)), "\""), " (HTTP ",
      r.status, ")");
  // Firecracker answers 400 for anything that goes wrong with a request,
  // including the host running out of space or memory while it writes a
  // snapshot: those are the host's resources, not a bad request.
  if (fault.has_value() &&
      (absl::StrContains(*fault, "No space left on device") || absl::StrContains(*fault, "os error 28") ||
       absl::StrContains(*fault, "Cannot allocate memory") || absl::StrContains(*fault, "os error 12"))) {
    return absl::ResourceExhaustedError(message);
  }
  if (r.status >= 400 && r.status < 500) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

namespace {
absl::Status Discard(absl::StatusOr<std::string> r) { return r.status(); }
}  // namespace

absl::Status ApiClient::PutBootSource(const BootSource& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/boot-source", ToJson(v), timeout));
}

absl::Status ApiClient::PutMachineConfig(const MachineConfig& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/machine-config", ToJson(v), timeout));
}

absl::Status ApiClient::PutDrive(const Drive& v, absl::Duration timeout) {
  if (v.drive_id.empty()) return absl::InvalidArgumentError("PUT /drives: empty drive_id");
  return Discard(Call("PUT", absl::StrCat("/drives/", v.drive_id), ToJson(v), timeout));
}

absl::Status ApiClient::PutNetworkInterface(const NetworkInterface& v, absl::Duration timeout) {
  if (v.iface_id.empty()) return absl::InvalidArgumentError("PUT /network-interfaces: empty iface_id");
  return Discard(Call("PUT", absl::StrCat("/network-interfaces/", v.iface_id), ToJson(v), timeout));
}

absl::Status ApiClient::PutLogger(const LoggerConfig& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/logger", ToJson(v), timeout));
}

absl::Status ApiClient::PutMetrics(const MetricsConfig& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/metrics", ToJson(v), timeout));
}

absl::Status ApiClient::PutMmdsConfig(const MmdsConfig& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/mmds/config", ToJson(v), timeout));
}

absl::Status ApiClient::PutVsock(const VsockDevice& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/vsock", ToJson(v), timeout));
}

absl::Status ApiClient::PutMmds(absl::string_view json, absl::Duration timeout) {
  return Discard(Call("PUT", "/mmds", json, timeout));
}

absl::StatusOr<std::string> ApiClient::GetMmds(absl::Duration timeout) {
  return Call("GET", "/mmds", "", timeout);
}

absl::Status ApiClient::InstanceStart(absl::Duration timeout) {
  return Discard(Call("PUT", "/actions", ActionJson("InstanceStart"), timeout));
}

absl::Status ApiClient::Pause(absl::Duration timeout) {
  return Discard(Call("PATCH", "/vm", VmStateJson(true), timeout));
}

absl::Status ApiClient::Resume(absl::Duration timeout) {
  return Discard(Call("PATCH", "/vm", VmStateJson(false), timeout));
}

absl::Status ApiClient::CreateSnapshot(const SnapshotCreate& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/snapshot/create", ToJson(v), timeout));
}

absl::Status ApiClient::LoadSnapshot(const SnapshotLoad& v, absl::Duration timeout) {
  return Discard(Call("PUT", "/snapshot/load", ToJson(v), timeout));
}

absl::StatusOr<InstanceInfo> ApiClient::GetInstanceInfo(absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::string body, Call("GET", "/", "", timeout));
  absl::StatusOr<InstanceInfo> info = ParseInstanceInfo(body);
  if (!info.ok()) return Annotate(info.status(), "GET /");
  return info;
}

absl::StatusOr<Version> ApiClient::GetVersion(absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::string body, Call("GET", "/version", "", timeout));
  absl::StatusOr<std::string> text = ParseFirecrackerVersion(body);
  if (!text.ok()) return Annotate(text.status(), "GET /version");
  absl::StatusOr<Version> v = ParseVersion(*text);
  if (!v.ok()) return Annotate(v.status(), "GET /version");
  return v;
}

}  // namespace fcvm::firecracker
