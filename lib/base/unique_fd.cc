#include "lib/base/unique_fd.h"

#include <unistd.h>

namespace fcvm {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) {
    // close() may fail with EINTR but the fd is released regardless on Linux;
    // retrying would risk closing an fd another thread just got.
    ::close(fd_);
  }
  fd_ = fd;
}

}  // namespace fcvm
