#include "tests/testing/run_command.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "lib/base/process.h"
#include "lib/base/unique_fd.h"

namespace fcvm::testing {

CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                         const std::string& stdin_path) {
  CommandResult r;
  UniqueFd in;
  if (!stdin_path.empty()) {
    in.Reset(open(stdin_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) {
      r.err = "open " + stdin_path + " failed";
      return r;
    }
  }
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) < 0) return r;
  if (pipe2(err, O_CLOEXEC) < 0) {
    close(out[0]);
    close(out[1]);
    return r;
  }
  SpawnOptions opts;
  opts.argv = argv;
  opts.fds = {{out[1], 1}, {err[1], 2}};
  if (in) opts.fds.push_back({in.get(), 0});
  absl::StatusOr<Process> p = Process::Spawn(opts);
  close(out[1]);
  close(err[1]);
  struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_count = 2;
  char buf[4096];
  absl::Time deadline = absl::Now() + timeout;
  while (p.ok() && open_count > 0) {
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(fds, 2, ms) <= 0) break;
    for (auto& f : fds) {
      if (f.fd < 0 || f.revents == 0) continue;
      ssize_t n = read(f.fd, buf, sizeof(buf));
      if (n <= 0) {
        close(f.fd);
        f.fd = -1;
        --open_count;
      } else {
        (&f == &fds[0] ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  if (!p.ok()) {
    r.err = p.status().ToString();
    return r;
  }
  absl::StatusOr<ExitStatus> st = p->Wait(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
  if (st.ok() && !st->signaled) r.code = st->value;
  return r;  // a command still running is killed by ~Process
}

}  // namespace fcvm::testing
