#pragma once

// A typed client for Firecracker's HTTP API on its Unix socket (libcurl with
// CURLOPT_UNIX_SOCKET_PATH).
//
// Every call has a deadline (the client's default or the one passed in).
// Errors:
//   - Firecracker refused the request (HTTP 4xx): InvalidArgument with
//     "<METHOD> <path>: <fault_message>";
//   - Firecracker failed internally (HTTP 5xx): Internal, same shape;
//   - no answer in time: DeadlineExceeded;
//   - socket missing, connection refused or reset (Firecracker not up yet or
//     gone): Unavailable.
// The client knows nothing about the process behind the socket; Vmm adds the
// process's exit status and last output to errors where it has died.
//
// Each request uses its own connection, so no request is ever re-sent.
//
// Thread-safety: calls are serialised on an internal mutex (Firecracker's API
// server handles one request at a time anyway), so one client may be shared.

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/firecracker/api_types.h"
#include "lib/firecracker/version.h"

namespace fcvm::firecracker {

struct HttpResponse {
  long status = 0;  // HTTP status code
  std::string body;
};

class ApiClient {
 public:
  // Use the client's default timeout for this call.
  static constexpr absl::Duration kDefault = absl::ZeroDuration();

  explicit ApiClient(std::string socket_path, absl::Duration default_timeout = absl::Seconds(10));
  ~ApiClient();
  ApiClient(const ApiClient&) = delete;
  ApiClient& operator=(const ApiClient&) = delete;

  const std::string& socket_path() const { return socket_path_; }

  // Pre-boot configuration.
  absl::Status PutBootSource(const BootSource& v, absl::Duration timeout = kDefault);
  absl::Status PutMachineConfig(const MachineConfig& v, absl::Duration timeout = kDefault);
  absl::Status PutDrive(const Drive& v, absl::Duration timeout = kDefault);
  absl::Status PutNetworkInterface(const NetworkInterface& v, absl::Duration timeout = kDefault);
  absl::Status PutLogger(const LoggerConfig& v, absl::Duration timeout = kDefault);
  absl::Status PutMetrics(const MetricsConfig& v, absl::Duration timeout = kDefault);
  absl::Status PutMmdsConfig(const MmdsConfig& v, absl::Duration timeout = kDefault);
  absl::Status PutVsock(const VsockDevice& v, absl::Duration timeout = kDefault);

  // The metadata store (MMDS): any time, before or after boot. PUT replaces
  // it with `json` (an object; Firecracker refuses more than its
  // --mmds-size-limit, 51200 bytes by default); GET returns it.
  absl::Status PutMmds(absl::string_view json, absl::Duration timeout = kDefault);
  absl::StatusOr<std::string> GetMmds(absl::Duration timeout = kDefault);

  absl::Status InstanceStart(absl::Duration timeout = kDefault);
  // PATCH /vm.
  absl::Status Pause(absl::Duration timeout = kDefault);
  absl::Status Resume(absl::Duration timeout = kDefault);

  // The VM must be paused. Diff writes the pages dirtied since the last
  // snapshot (exactly with track_dirty_pages, else a mincore(2) superset).
  absl::Status CreateSnapshot(const SnapshotCreate& v, absl::Duration timeout = kDefault);
  // On a fresh Firecracker only; a failure makes Firecracker exit.
  absl::Status LoadSnapshot(const SnapshotLoad& v, absl::Duration timeout = kDefault);

  absl::StatusOr<InstanceInfo> GetInstanceInfo(absl::Duration timeout = kDefault);
  // GET /version, parsed.
  absl::StatusOr<Version> GetVersion(absl::Duration timeout = kDefault);

  // Raw access, for calls without a typed wrapper. `body` empty = no body.
  // Returns any HTTP answer (also 4xx) as a response; only transport failures
  // are errors.
  absl::StatusOr<HttpResponse> Request(absl::string_view method, absl::string_view path,
                                       absl::string_view body, absl::Duration timeout = kDefault);

  // Request + status mapping described above; the body of a 2xx answer.
  absl::StatusOr<std::string> Call(absl::string_view method, absl::string_view path, absl::string_view body,
                                   absl::Duration timeout = kDefault);

 private:
  struct Curl;
  const std::string socket_path_;
  const absl::Duration default_timeout_;
  absl::Mutex mu_;
  std::unique_ptr<Curl> curl_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::firecracker
