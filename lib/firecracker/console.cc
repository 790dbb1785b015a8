#include "lib/firecracker/console.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"

namespace fcvm::firecracker {

// ---------------------------------------------------------------- LineRing

LineRing::LineRing(size_t max_lines, size_t max_line_bytes)
    : max_lines_(max_lines == 0 ? 1 : max_lines), max_line_bytes_(max_line_bytes == 0 ? 1 : max_line_bytes) {}

void LineRing::Push(std::string line) {
  lines_.push_back(std::move(line));
  ++total_;
  while (lines_.size() > max_lines_) lines_.pop_front();
}

void LineRing::Append(absl::string_view bytes) {
  for (char c : bytes) {
    if (c == '\n') {
      Push(std::move(partial_));
      partial_.clear();
    } else if (c != '\r') {
      partial_.push_back(c);
      if (partial_.size() >= max_line_bytes_) {
        Push(std::move(partial_));
        partial_.clear();
      }
    }
  }
}

void LineRing::Flush() {
  if (partial_.empty()) return;
  Push(std::move(partial_));
  partial_.clear();
}

std::vector<std::string> LineRing::Lines() const { return {lines_.begin(), lines_.end()}; }

std::vector<std::string> LineRing::Last(size_t n) const {
  size_t skip = lines_.size() > n ? lines_.size() - n : 0;
  return {lines_.begin() + static_cast<std::ptrdiff_t>(skip), lines_.end()};
}

const std::string* LineRing::Get(uint64_t k) const {
  uint64_t first = total_ - lines_.size();
  if (k < first || k >= total_) return nullptr;
  return &lines_[static_cast<size_t>(k - first)];
}

// ----------------------------------------------------------- CappedLogFile

namespace {
// The guest's output may carry secrets: root and the fcvm group only.
constexpr mode_t kLogMode = 0640;
}  // namespace

absl::StatusOr<CappedLogFile> CappedLogFile::Open(std::string path, size_t max_bytes, bool append) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_CLOEXEC, kLogMode));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  // A file left by an earlier run keeps its mode through O_CREAT: set it.
  if (fchmod(fd.get(), kLogMode) < 0) return ErrnoError(absl::StrCat("chmod ", path));
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return ErrnoError(absl::StrCat("stat ", path));
  CappedLogFile log(std::move(path), max_bytes == 0 ? 1 : max_bytes, std::move(fd));
  log.size_ = static_cast<size_t>(st.st_size);
  return log;
}

absl::Status CappedLogFile::Rotate() {
  std::string old = absl::StrCat(path_, ".1");
  if (::rename(path_.c_str(), old.c_str()) < 0)
    return ErrnoError(absl::StrCat("rename ", path_, " -> ", old));
  UniqueFd fd(::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, kLogMode));
  if (!fd) return ErrnoError(absl::StrCat("open ", path_));
  if (fchmod(fd.get(), kLogMode) < 0) return ErrnoError(absl::StrCat("chmod ", path_));
  fd_ = std::move(fd);
  size_ = 0;
  return absl::OkStatus();
}

absl::Status CappedLogFile::Write(absl::string_view data) {
  while (!data.empty()) {
    if (size_ >= max_bytes_) RETURN_IF_ERROR(Rotate());
    size_t room = max_bytes_ - size_;
    absl::string_view chunk = data.substr(0, room);
    ssize_t n = ::write(fd_.get(), chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat("write ", path_));
    }
    size_ += static_cast<size_t>(n);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------- ConsoleCapture

absl::StatusOr<std::unique_ptr<ConsoleCapture>> ConsoleCapture::Start(UniqueFd read_end,
                                                                      ConsoleOptions options) {
  if (!read_end) return absl::InvalidArgumentError("console capture: no pipe");
  ASSIGN_OR_RETURN(CappedLogFile log,
                   CappedLogFile::Open(options.log_path, options.max_log_bytes, options.append));
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoError("eventfd");
  std::unique_ptr<ConsoleCapture> c(
      new ConsoleCapture(std::move(read_end), std::move(wake), std::move(log), options.ring_lines));
  c->thread_ = std::thread([raw = c.get()] { raw->Run(); });
  return c;
}

ConsoleCapture::ConsoleCapture(UniqueFd read_end, UniqueFd wake, CappedLogFile log, size_t ring_lines)
    : read_end_(std::move(read_end)), wake_(std::move(wake)), log_(std::move(log)), ring_(ring_lines) {}

ConsoleCapture::~ConsoleCapture() { Stop(); }

void ConsoleCapture::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_.get(), &one, sizeof(one));
  (void)ignored;
  thread_.join();
}

void ConsoleCapture::Consume(absl::string_view bytes) {
  absl::MutexLock lock(&mu_);
  absl::Status st = log_.Write(bytes);
  if (!st.ok() && log_error_.ok()) log_error_ = st;
  uint64_t before = ring_.total_lines();
  ring_.Append(bytes);
  if (ring_.total_lines() != before) changed_.SignalAll();
}

void ConsoleCapture::Run() {
  char buf[16384];
  bool stopping = false;
  while (true) {
    if (!stopping) {
      struct pollfd pfds[2] = {{read_end_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      int r = ::poll(pfds, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (pfds[1].revents & POLLIN) {
        // Drain what is buffered without blocking on a writer that lives on.
        stopping = true;
        int flags = fcntl(read_end_.get(), F_GETFL);
        if (flags >= 0) fcntl(read_end_.get(), F_SETFL, flags | O_NONBLOCK);
      } else if ((pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        continue;
      }
    }
    ssize_t n = ::read(read_end_.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF, EAGAIN while stopping, or an error: done
    Consume(absl::string_view(buf, static_cast<size_t>(n)));
  }
  absl::MutexLock lock(&mu_);
  ring_.Flush();
  closed_ = true;
  changed_.SignalAll();
}

std::vector<std::string> ConsoleCapture::LastLines(size_t n) const {
  absl::MutexLock lock(&mu_);
  return ring_.Last(n);
}

uint64_t ConsoleCapture::line_count() const {
  absl::MutexLock lock(&mu_);
  return ring_.total_lines();
}

bool ConsoleCapture::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

absl::Status ConsoleCapture::log_error() const {
  absl::MutexLock lock(&mu_);
  return log_error_;
}

absl::StatusOr<std::string> ConsoleCapture::WaitForLine(const std::function<bool(absl::string_view)>& match,
                                                        uint64_t from_line, absl::Time deadline,
                                                        uint64_t* line_number) const {
  absl::MutexLock lock(&mu_);
  uint64_t next = from_line;
  bool timed_out = false;
  while (true) {
    uint64_t first = ring_.total_lines() - ring_.size();
    if (next < first) next = first;
    for (; next < ring_.total_lines(); ++next) {
      const std::string* line = ring_.Get(next);
      if (line != nullptr && match(*line)) {
        if (line_number != nullptr) *line_number = next;
        return *line;
      }
    }
    if (closed_) return absl::FailedPreconditionError("console closed without the expected line");
    if (timed_out) return absl::DeadlineExceededError("no matching console line before the deadline");
    timed_out = changed_.WaitWithDeadline(&mu_, deadline);
  }
}

}  // namespace fcvm::firecracker
