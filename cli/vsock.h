#pragma once

// fcvmctl vsock: Firecracker's host-initiated vsock connections. The VM's
// host-side socket (Vm.vsock_uds_path) accepts a connection; the client
// sends "CONNECT <port>\n"; Firecracker answers "OK <host port>\n" once the
// guest accepted the connection on that port, and the socket then carries
// the stream. When nothing listens on the port, a guest's vsock driver
// resets the connection and Firecracker closes the socket; a guest without a
// vsock driver never answers.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"

namespace fcvm::cli {

// Connects to guest port `port` through `uds_path`. Errors: the socket's
// (NotFound, ConnectionRefused as Unavailable); Unavailable "guest port P
// refused the connection" when Firecracker closes it; DeadlineExceeded "no
// answer from guest port P within T" after `timeout`; InvalidArgument for an
// answer that is not "OK <n>".
absl::StatusOr<UniqueFd> VsockConnect(const std::string& uds_path, uint32_t port, absl::Duration timeout);

// Copies `in` to `sock` and `sock` to `out` until the socket closes (stdin's
// end is passed on as a write shutdown).
absl::Status PumpVsock(int sock, int in, int out);

}  // namespace fcvm::cli
