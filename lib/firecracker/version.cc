#include "lib/firecracker/version.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

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

}  // namespace fcvm::firecracker
