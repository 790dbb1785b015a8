#include "lib/base/names.h"

#include <sys/random.h>

#include <cstdint>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fcvm {

absl::Status ValidateName(absl::string_view kind, absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(kind, " must not be empty"));
  if (name.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(kind, " is ", name.size(), " bytes; at most 64 allowed"));
  }
  if (name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(kind, " must not be '", name, "'"));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(kind, " '", absl::CHexEscape(name), "' has a character outside [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

std::string NewId(absl::string_view prefix) {
  uint8_t bytes[6];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return absl::StrCat(
      prefix, "-", absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), sizeof(bytes))));
}

}  // namespace fcvm
