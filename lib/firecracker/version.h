#pragma once

// Firecracker versions: parsing what `firecracker --version` and GET /version
// print, and the oldest release fcvm drives.
//
// fcvm needs 1.12 or later: 1.12 brought `page_size` in the Uffd handshake,
// `network_overrides` on snapshot load, and keeps the Uffd socket open for the
// VM's lifetime (so the page server sees the VM go away).

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fcvm::firecracker {

struct Version {
  int major = 0;
  int minor = 0;
  int patch = 0;
  // Anything after "major.minor.patch" ("-dev", "-rc1"), kept for messages.
  std::string suffix;

  std::string ToString() const;  // "1.14.2" or "1.15.0-dev"

  friend bool operator==(const Version& a, const Version& b) {
    return a.major == b.major && a.minor == b.minor && a.patch == b.patch;
  }
  friend bool operator<(const Version& a, const Version& b) {
    if (a.major != b.major) return a.major < b.major;
    if (a.minor != b.minor) return a.minor < b.minor;
    return a.patch < b.patch;
  }
  friend bool operator>=(const Version& a, const Version& b) { return !(a < b); }
};

inline const Version kMinimumVersion{1, 12, 0, ""};

// Parses "1.14.2", "v1.14.2", or the first line of `firecracker --version`
// ("Firecracker v1.14.2\n\n<log line>"). InvalidArgument, quoting the text,
// when no version is found.
absl::StatusOr<Version> ParseVersion(absl::string_view text);

// OK for kMinimumVersion and later; FailedPrecondition naming `what` (the
// binary's path) and both versions otherwise.
absl::Status CheckSupported(const Version& version, absl::string_view what);

// Runs `path --version` (killed at `timeout`) and parses what it prints.
// `what` names the binary in errors ("firecracker binary", "jailer binary").
// Errors: InvalidArgument for an empty path; NotFound when `path` does not
// exist; PermissionDenied when it is not an executable file;
// FailedPrecondition when --version fails or prints no version (the message
// quotes its output); DeadlineExceeded. `output`, when given, receives what
// it printed.
absl::StatusOr<Version> ProbeVersion(const std::string& path, absl::string_view what,
                                     absl::Duration timeout = absl::Seconds(5),
                                     std::string* output = nullptr);

// Runs `path --snapshot-version` and parses what it prints ("v8.0.0"): the
// snapshot data format this Firecracker writes, and the newest it loads
// (Firecracker loads a vmstate whose format has the same major and a minor
// no greater than its own; see snapshot_compat.h). Errors as ProbeVersion.
absl::StatusOr<Version> ProbeSnapshotFormat(const std::string& path,
                                            absl::Duration timeout = absl::Seconds(5));

}  // namespace fcvm::firecracker
