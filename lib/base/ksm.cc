#include "lib/base/ksm.h"

#include <fcntl.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm {
namespace {

absl::StatusOr<uint64_t> ReadNumber(const std::string& path) {
  ASSIGN_OR_RETURN(std::string s, ReadFile(path));
  uint64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(s), &v)) {
    return absl::InternalError(absl::StrCat(path, ": unexpected contents '", s, "'"));
  }
  return v;
}

// sysfs takes a plain write (O_TRUNC is ignored there; it keeps a test's
// regular file right).
absl::Status WriteNumber(const std::string& path, uint64_t value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd) return ErrnoError(absl::StrCat("open ", path));
  std::string s = absl::StrCat(value, "\n");
  if (::write(fd.get(), s.data(), s.size()) != static_cast<ssize_t>(s.size())) {
    return ErrnoError(absl::StrCat("write ", value, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KsmStatus> ReadKsm(const std::string& dir) {
  if (::access(dir.c_str(), F_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(dir, ": this kernel has no KSM (CONFIG_KSM)"));
  }
  KsmStatus s;
  const std::pair<const char*, uint64_t*> fields[] = {
      {"run", &s.run},
      {"pages_to_scan", &s.pages_to_scan},
      {"sleep_millisecs", &s.sleep_millisecs},
      {"pages_shared", &s.pages_shared},
      {"pages_sharing", &s.pages_sharing},
      {"pages_unshared", &s.pages_unshared},
      {"pages_volatile", &s.pages_volatile},
      {"full_scans", &s.full_scans},
  };
  for (const auto& [name, field] : fields) {
    ASSIGN_OR_RETURN(*field, ReadNumber(absl::StrCat(dir, "/", name)));
  }
  return s;
}

absl::StatusOr<KsmControl> KsmControl::Apply(const KsmSettings& settings, const std::string& dir) {
  if (settings.run.has_value() && *settings.run > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ksm run must be 0 or 1, got ", *settings.run, " (2 unmerges every page)"));
  }
  if (::access(dir.c_str(), F_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(dir, ": this kernel has no KSM (CONFIG_KSM)"));
  }
  // The rates first, so that ksmd starts with them.
  const std::pair<const char*, std::optional<uint64_t>> wanted[] = {
      {"pages_to_scan", settings.pages_to_scan},
      {"sleep_millisecs", settings.sleep_millisecs},
      {"run", settings.run},
  };
  KsmControl control(dir, {});
  for (const auto& [name, value] : wanted) {
    if (!value.has_value()) continue;
    std::string path = absl::StrCat(dir, "/", name);
    absl::StatusOr<uint64_t> before = ReadNumber(path);
    if (!before.ok()) return before.status();  // `control` puts back what it changed
    if (*before == *value) continue;
    if (::access(path.c_str(), W_OK) != 0) {
      return ErrnoError(absl::StrCat("ksm: ", path, " is not writable"));
    }
    RETURN_IF_ERROR(Annotate(WriteNumber(path, *value), "ksm"));
    control.changes_.push_back({name, *before, *value});
  }
  return control;
}

KsmControl::~KsmControl() { (void)Restore(); }

KsmControl::KsmControl(KsmControl&& other) noexcept
    : dir_(std::move(other.dir_)), changes_(std::exchange(other.changes_, {})) {}

KsmControl& KsmControl::operator=(KsmControl&& other) noexcept {
  if (this != &other) {
    (void)Restore();
    dir_ = std::move(other.dir_);
    changes_ = std::exchange(other.changes_, {});
  }
  return *this;
}

std::vector<std::string> KsmControl::Describe() const {
  std::vector<std::string> out;
  for (const Change& c : changes_) out.push_back(absl::StrCat(c.name, ": ", c.before, " -> ", c.after));
  return out;
}

absl::Status KsmControl::Restore() {
  std::vector<Change> changes = std::exchange(changes_, {});
  absl::Status first;
  for (auto it = changes.rbegin(); it != changes.rend(); ++it) {
    std::string path = absl::StrCat(dir_, "/", it->name);
    absl::StatusOr<uint64_t> now = ReadNumber(path);
    if (now.ok() && *now != it->after) continue;  // changed by someone else since: theirs
    absl::Status st = now.ok() ? WriteNumber(path, it->before) : now.status();
    if (!st.ok() && first.ok()) first = Annotate(st, "ksm restore");
  }
  return first;
}

}  // namespace fcvm
