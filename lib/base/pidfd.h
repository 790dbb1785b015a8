#pragma once

// pidfd system calls. glibc 2.36's <sys/pidfd.h> declares them without C
// linkage for C++, so fcvm calls them through syscall(2).

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fcvm {

inline int PidfdOpen(pid_t pid, unsigned int flags) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
}

inline int PidfdSendSignal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

}  // namespace fcvm
