#pragma once

// Progress of a long call (clone, run, snapshot create) on stderr while the
// caller blocks in it. Progress never touches stdout, so --json output stays
// clean.

#include <condition_variable>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace fcvm::cli {

class Progress {
 public:
  // Starts a thread that writes "<spinner> <what> <elapsed>" to `err`. With
  // `tty` the line is redrawn in place every `interval` and erased when the
  // Progress ends; without it (--progress into a file or pipe) a plain line
  // is written every `line_interval`. `err` must not be written by anyone
  // else until the Progress is destroyed.
  Progress(std::ostream& err, std::string what, bool tty, absl::Duration interval = absl::Milliseconds(100),
           absl::Duration line_interval = absl::Seconds(1));
  ~Progress();

  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

 private:
  void Run();

  std::ostream& err_;
  const std::string what_;
  const bool tty_;
  const absl::Duration interval_;
  const absl::Duration line_interval_;
  const absl::Time start_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace fcvm::cli
