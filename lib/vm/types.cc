#include "lib/vm/types.h"

namespace fcvm::vm {

const char* MemoryBackendName(MemoryBackend backend) {
  return backend == MemoryBackend::kFile ? "file" : "uffd";
}

const char* HugePagesName(HugePages huge_pages) { return huge_pages == HugePages::k2M ? "2M" : "none"; }

bool ParseHugePages(absl::string_view name, HugePages* out) {
  if (name == "none" || name == "None" || name.empty()) {
    *out = HugePages::kNone;
  } else if (name == "2M" || name == "2m") {
    *out = HugePages::k2M;
  } else {
    return false;
  }
  return true;
}

uint64_t GuestPageSize(HugePages huge_pages) { return huge_pages == HugePages::k2M ? 2u << 20 : 4096; }

}  // namespace fcvm::vm
