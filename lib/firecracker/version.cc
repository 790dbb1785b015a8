#include "lib/firecracker/version.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::firecracker {
namespace {

// Reads a run of digits at `*pos` into `out`.
bool ReadNumber(absl::string_view s, size_t* pos, int* out) {
  size_t start = *pos;
  while (*pos < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[*pos])) && *pos - start < 9) {
    ++*pos;
  }
  if (*pos == start) return false;
  return absl::SimpleAtoi(s.substr(start, *pos - start), out);
}

// Parses "X.Y.Z[suffix]" at the start of `s`.
bool ParseTriple(absl::string_view s, Version* v) {
  size_t pos = 0;
  if (!ReadNumber(s, &pos, &v->major)) return false;
  if (pos >= s.size() || s[pos] != '.') return false;
  ++pos;
  if (!ReadNumber(s, &pos, &v->minor)) return false;
  if (pos >= s.size() || s[pos] != '.') return false;
  ++pos;
  if (!ReadNumber(s, &pos, &v->patch)) return false;
  size_t end = pos;
  while (end < s.size() && !absl::ascii_isspace(static_cast<unsigned char>(s[end]))) ++end;
  v->suffix = std::string(s.substr(pos, end - pos));
  return true;
}

}  // namespace

std::string Version::ToString() const { return absl::StrCat(major, ".", minor, ".", patch, suffix); }

absl::StatusOr<Version> ParseVersion(absl::string_view text) {
  // Only the first non-empty line counts: Firecracker follows the version
  // with a log line that carries a timestamp full of digits and dots.
  absl::string_view line;
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    l = absl::StripAsciiWhitespace(l);
    if (!l.empty()) {
      line = l;
      break;
    }
  }
  for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
    if (!word.empty() && (word[0] == 'v' || word[0] == 'V')) word.remove_prefix(1);
    Version v;
    if (ParseTriple(word, &v)) return v;
  }
  std::string quoted(text.substr(0, 200));
  return absl::InvalidArgumentError(
      absl::StrCat("no Firecracker version in \"", absl::CEscape(quoted), "\""));
}

absl::Status CheckSupported(const Version& version, absl::string_view what) {
  if (version >= kMinimumVersion) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(what, " is Firecracker ", version.ToString(),
                                                    "; fcvm needs ", kMinimumVersion.ToString(),
                                                    " or later"));
}

namespace {

// Runs `path flag`, killed at `timeout`, and returns what it printed (stdout
// and stderr) once it exited successfully.
absl::StatusOr<std::string> RunForOutput(const std::string& path, const char* flag, absl::string_view what,
                                         absl::Duration timeout) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty path"));
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError(absl::StrCat(what, " ", path));
  if (!S_ISREG(st.st_mode) || access(path.c_str(), X_OK) < 0) {
    return absl::PermissionDeniedError(absl::StrCat(what, " ", path, " is not an executable file"));
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd out_r(p[0]);
  UniqueFd out_w(p[1]);
  ASSIGN_OR_RETURN(Process proc,
                   Process::Spawn({.argv = {path, flag}, .fds = {{out_w.get(), 1}, {out_w.get(), 2}}}));
  out_w.Reset();

  absl::Time deadline = absl::Now() + timeout;
  std::string output;
  char buf[4096];
  while (output.size() < 65536) {
    int wait_ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    struct pollfd pfd = {out_r.get(), POLLIN, 0};
    int r = poll(&pfd, 1, wait_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("poll");
    if (r == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(path, " ", flag, ": no answer within ", absl::FormatDuration(timeout)));
    }
    ssize_t n = read(out_r.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<size_t>(n));
  }
  absl::StatusOr<ExitStatus> exit = proc.Wait(std::max(absl::ZeroDuration(), deadline - absl::Now()));
  if (!exit.ok()) return Annotate(exit.status(), absl::StrCat(path, " ", flag));
  if (!exit->success()) {
    std::string quoted = absl::CEscape(absl::StripAsciiWhitespace(output).substr(0, 300));
    return absl::FailedPreconditionError(
        absl::StrCat(path, " ", flag, " failed (", exit->ToString(), "): \"", quoted, "\""));
  }
  return output;
}

}  // namespace

absl::StatusOr<Version> ProbeVersion(const std::string& path, absl::string_view what, absl::Duration timeout,
                                     std::string* printed) {
  ASSIGN_OR_RETURN(std::string output, RunForOutput(path, "--version", what, timeout));
  if (printed != nullptr) *printed = output;
  absl::StatusOr<Version> version = ParseVersion(output);
  if (!version.ok()) {
    std::string quoted = absl::CEscape(absl::StripAsciiWhitespace(output).substr(0, 300));
    return absl::FailedPreconditionError(
        absl::StrCat(path, " --version printed no version: \"", quoted, "\""));
  }
  return *version;
}

absl::StatusOr<Version> ProbeSnapshotFormat(const std::string& path, absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::string output,
                   RunForOutput(path, "--snapshot-version", "firecracker binary", timeout));
  absl::StatusOr<Version> version = ParseVersion(output);
  if (!version.ok()) {
    std::string quoted = absl::CEscape(absl::StripAsciiWhitespace(output).substr(0, 300));
    return absl::FailedPreconditionError(
        absl::StrCat(path, " --snapshot-version printed no version: \"", quoted, "\""));
  }
  return *version;
}

}  // namespace fcvm::firecracker
