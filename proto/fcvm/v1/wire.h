#pragma once

// What fcvmd and its clients agree on beyond the .proto files: message size
// limits (set on both sides, see the bounds in vm.proto) and the trailing
// metadata fcvmd puts on every answer of its own.

#include <cstddef>

namespace fcvm::v1 {

// Requests fcvmd accepts (the largest real one, a RunVm with 16 drives and
// full labels, is well under 64 KiB).
inline constexpr int kMaxRequestBytes = 4 << 20;
// Answers fcvmd may send and a client must accept: a CloneSnapshot of 1,024
// clones with the most labels is about 20 MiB; listings are paged at 4 MiB.
inline constexpr int kMaxResponseBytes = 64 << 20;

// Trailing metadata key on every answer fcvmd gives itself: an UNAVAILABLE
// carrying it is fcvmd's own word ("shutting down"), one without it means
// fcvmd was not reached.
inline constexpr char kServedByKey[] = "fcvm-served-by";

}  // namespace fcvm::v1
