#include "lib/base/logging.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/sinks/systemd_sink.h"
#include "spdlog/spdlog.h"

namespace fcvm {

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  struct stat st;
  if (fstat(2, &st) < 0) return false;
  unsigned long dev = 0, ino = 0;
  if (std::sscanf(stream, "%lu:%lu", &dev, &ino) != 2) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

absl::Status InitLogging(absl::string_view level, absl::string_view program) {
  spdlog::level::level_enum lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("bad log level '", level, "' (want trace, debug, info, warn, error or off)"));
  }
  std::shared_ptr<spdlog::logger> logger;
  if (StderrIsJournal()) {
    auto sink = std::make_shared<spdlog::sinks::systemd_sink_mt>(std::string(program));
    logger = std::make_shared<spdlog::logger>(std::string(program), sink);
    logger->set_pattern("%v");
  } else {
    logger = std::make_shared<spdlog::logger>(std::string(program),
                                              std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n: %v");
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return absl::OkStatus();
}

}  // namespace fcvm
