#pragma once

// Capturing a VM's serial console (Firecracker's stdout).
//
// Firecracker's vCPU thread writes the guest's serial output to its stdout; if
// nobody reads, the pipe fills and the guest stalls. ConsoleCapture drains the
// read end of that pipe on its own thread into a size-capped log file, and
// keeps the last lines in memory for error reports and for tests that wait for
// a line.

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {

// The last `max_lines` lines of a byte stream. A line longer than
// `max_line_bytes` is cut into pieces of that size, so memory stays bounded
// whatever the guest prints. '\r' is dropped. Not thread-safe.
class LineRing {
 public:
  explicit LineRing(size_t max_lines, size_t max_line_bytes = 4096);

  void Append(absl::string_view bytes);
  // Ends the current partial line, if any (at end of stream).
  void Flush();

  // Oldest first; at most max_lines.
  std::vector<std::string> Lines() const;
  // The last `n` lines (or fewer), oldest first.
  std::vector<std::string> Last(size_t n) const;
  // Lines completed so far, including those that fell out of the ring. Line
  // number k (0-based) is in the ring iff k >= total_lines() - Lines().size().
  uint64_t total_lines() const { return total_; }
  // The line with number `k` if still in the ring.
  const std::string* Get(uint64_t k) const;
  const std::string& partial() const { return partial_; }
  size_t size() const { return lines_.size(); }

 private:
  void Push(std::string line);

  const size_t max_lines_;
  const size_t max_line_bytes_;
  std::deque<std::string> lines_;
  std::string partial_;
  uint64_t total_ = 0;
};

// A log file that never exceeds `max_bytes`: when a write would cross the
// limit, the file is renamed to "<path>.1" (replacing the previous one) and
// a new one is started. At most 2 * max_bytes on disk. Not thread-safe.
class CappedLogFile {
 public:
  // Truncates an existing file unless `append` (then its size counts).
  static absl::StatusOr<CappedLogFile> Open(std::string path, size_t max_bytes, bool append = false);
  absl::Status Write(absl::string_view data);
  const std::string& path() const { return path_; }
  size_t size() const { return size_; }

 private:
  CappedLogFile(std::string path, size_t max_bytes, UniqueFd fd)
      : path_(std::move(path)), max_bytes_(max_bytes), fd_(std::move(fd)) {}
  absl::Status Rotate();

  std::string path_;
  size_t max_bytes_;
  UniqueFd fd_;
  size_t size_ = 0;
};

struct ConsoleOptions {
  std::string log_path;  // created or truncated (appended to if `append`)
  bool append = false;
  size_t max_log_bytes = 1 << 20;
  size_t ring_lines = 200;
};

// Drains one pipe on a thread. Thread-safe: any thread may read lines or wait
// while the drain thread appends.
class ConsoleCapture {
 public:
  // Takes the read end of the pipe (or FIFO), blocking. Errors: opening the
  // log file, creating the wake-up eventfd.
  static absl::StatusOr<std::unique_ptr<ConsoleCapture>> Start(UniqueFd read_end, ConsoleOptions options);
  // Stops (see Stop).
  ~ConsoleCapture();
  ConsoleCapture(const ConsoleCapture&) = delete;
  ConsoleCapture& operator=(const ConsoleCapture&) = delete;

  // Reads what is still buffered in the pipe, then ends the thread, whether
  // or not the writer still holds its end. Idempotent.
  void Stop();

  std::vector<std::string> LastLines(size_t n) const;
  uint64_t line_count() const;
  // True once the writer closed the pipe (the VMM exited) or Stop ran.
  bool closed() const;
  // The first error writing the log file, if any (the drain goes on: the
  // guest must not stall because the log disk is full).
  absl::Status log_error() const;

  // Waits until a line numbered >= `from_line` satisfies `match` and returns
  // it, and its number in `*line_number` if given (wait again from that plus
  // one for the next match). DeadlineExceeded at `deadline`;
  // FailedPrecondition when the console closed without such a line. Lines
  // that fell out of the ring while the caller was not waiting are not seen.
  absl::StatusOr<std::string> WaitForLine(const std::function<bool(absl::string_view)>& match,
                                          uint64_t from_line, absl::Time deadline,
                                          uint64_t* line_number = nullptr) const;

 private:
  ConsoleCapture(UniqueFd read_end, UniqueFd wake, CappedLogFile log, size_t ring_lines);
  void Run();
  void Consume(absl::string_view bytes);

  UniqueFd read_end_;
  UniqueFd wake_;  // eventfd: Stop() -> thread
  std::thread thread_;

  mutable absl::Mutex mu_;
  mutable absl::CondVar changed_;
  CappedLogFile log_ ABSL_GUARDED_BY(mu_);
  LineRing ring_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status log_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::firecracker
