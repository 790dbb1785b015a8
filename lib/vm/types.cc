#include "lib/vm/types.h"

namespace fcvm::vm {

const char* MemoryBackendName(MemoryBackend backend) {
  return backend == MemoryBackend::kFile ? "file" : "uffd";
}

}  // namespace fcvm::vm
