#pragma once

// The Firecracker Uffd-backend handshake, parsed and checked.
//
// Firecracker (v1.12+) connects to the page server's socket and sends ONE
// message: a bare JSON array of guest memory regions, with the userfaultfd as
// the only SCM_RIGHTS fd (see the team's shared firecracker-facts.md). Example:
//   [{"base_host_virt_addr":140027082309632,"size":134217728,"offset":0,
//     "page_size":4096,"page_size_kib":4096}]
// `page_size` is in bytes; older releases send only `page_size_kib`, which
// also holds BYTES despite its name. Unknown fields are ignored.
//
// ParseHandshake is a pure function of the received bytes and what recvmsg
// said about fds; the fd's type is checked separately by CheckIsUserfaultfd.
// Every error is InvalidArgument with a message naming what is wrong
// ("region 1: size 4097 is not a multiple of the page size 4096").

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fcvm::uffd {

// The receive buffer size: a handshake that fills it is rejected as too large
// (a real one is ~110 bytes per region).
inline constexpr size_t kHandshakeBufferSize = 64 * 1024;

struct GuestRegion {
  uint64_t base_host_virt_addr = 0;  // address in the peer (Firecracker)
  uint64_t size = 0;                 // bytes, a multiple of page_size
  uint64_t offset = 0;               // offset of the region in the memory file
  uint64_t page_size = 0;            // bytes
};

struct Handshake {
  std::vector<GuestRegion> regions;  // sorted by base_host_virt_addr
  uint64_t page_size = 0;            // common to all regions
};

// What one recvmsg returned.
struct HandshakeMessage {
  absl::string_view data;          // the bytes received
  size_t num_fds = 0;              // SCM_RIGHTS fds received
  bool control_truncated = false;  // MSG_CTRUNC: more fds were sent than fit
  bool filled_buffer = false;      // data.size() reached kHandshakeBufferSize
};

// Checks: exactly one fd and no MSG_CTRUNC; not larger than the buffer; one
// JSON value and nothing else: only JSON whitespace (space, tab, LF, CR) may
// come before or after it, as the JSON grammar and Firecracker's reference
// handler allow (no NUL byte, no byte-order mark); a non-empty array of
// objects; each with unsigned-integer base_host_virt_addr, size, offset and
// page_size (or page_size_kib); page size a power of two >= 4096 and equal
// across regions; base, size and offset multiples of it; size > 0; offset +
// size within `mem_file_size` (overflow-safe); regions overlapping neither in
// the file nor in the peer's address space.
absl::StatusOr<Handshake> ParseHandshake(const HandshakeMessage& message, uint64_t mem_file_size);

// The part of [start, end) made of whole pages of `page_size` (a power of
// two): [start rounded up, end rounded down), empty (begin >= end) when no
// page is wholly inside. A REMOVE event's range can cover part of a huge page
// (kernels before 6.16 send it before checking the range), but the kernel
// never drops part of a huge page: only these pages are gone.
struct AddressRange {
  uint64_t begin = 0, end = 0;
  bool empty() const { return begin >= end; }
};
AddressRange WholePagesIn(uint64_t start, uint64_t end, uint64_t page_size);

// OK when `fd` is a userfaultfd (its /proc/self/fd link reads
// "anon_inode:[userfaultfd]"); InvalidArgument naming what it is otherwise.
absl::Status CheckIsUserfaultfd(int fd);

}  // namespace fcvm::uffd
