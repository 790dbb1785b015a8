// The layering rules of house-style.md, checked on the source tree
// (`ctest -L style`):
//
//  - lib modules depend down the list base < metrics < io < uffd <
//    firecracker < net < storage < vm: an include of a module at or above
//    one's own fails;
//  - nothing below daemon/ (lib/, pager/) includes generated *.pb.h;
//  - cli/ includes the generated API, fcvm/v1/wire.h and lib/base only;
//  - each lib module's CMakeLists.txt lists every module and third-party
//    library its files include: what its headers include under DEPS
//    (public), what only its .cc files include under PRIVATE_DEPS.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace fcvm {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kLayers = {"base",        "metrics", "io",      "uffd",
                                          "firecracker", "net",     "storage", "vm"};

std::string Root() { return FCVM_SOURCE_DIR; }

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Include {
  std::string path;
  bool angle = false;
  int line = 0;
};

std::vector<Include> Includes(const fs::path& file) {
  static const std::regex kInclude(R"(^\s*#\s*include\s*([<"])([^>"]+)[>"])");
  std::vector<Include> out;
  std::ifstream in(file);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::smatch m;
    if (std::regex_search(line, m, kInclude)) out.push_back({m[2], m[1] == "<", n});
  }
  return out;
}

std::vector<fs::path> Sources(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string ext = e.path().extension();
    if (ext == ".h" || ext == ".cc") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

int LayerOf(const std::string& module) {
  auto it = std::find(kLayers.begin(), kLayers.end(), module);
  return it == kLayers.end() ? -1 : static_cast<int>(it - kLayers.begin());
}

// The CMake dependency an include needs, "" for the C/C++ library (nothing to
// list), or "?" for a third-party header this test does not know.
std::string DependencyOf(const Include& inc) {
  const std::string& p = inc.path;
  if (absl::StartsWith(p, "lib/")) {
    std::vector<std::string> parts = absl::StrSplit(p, '/');
    return "fcvm_" + parts[1];
  }
  static const std::vector<std::pair<std::string, std::string>> kMap = {
      {"absl/strings/str_format.h", "absl::str_format"},
      {"absl/strings/", "absl::strings"},
      {"absl/status/statusor.h", "absl::statusor"},
      {"absl/status/", "absl::status"},
      {"absl/synchronization/", "absl::synchronization"},
      {"absl/time/", "absl::time"},
      {"absl/cleanup/", "absl::cleanup"},
      {"absl/container/flat_hash_map.h", "absl::flat_hash_map"},
      {"absl/container/flat_hash_set.h", "absl::flat_hash_set"},
      {"absl/base/", "absl::base"},
      {"absl/types/span.h", "absl::span"},
      {"absl/functional/function_ref.h", "absl::function_ref"},
      {"spdlog/", "spdlog::spdlog"},
      {"fmt/", "spdlog::spdlog"},
      {"nlohmann/", "nlohmann_json::nlohmann_json"},
      {"liburing.h", "PkgConfig::LIBURING"},
      {"curl/", "CURL::libcurl"},
      {"openssl/", "OpenSSL::Crypto"},
      {"netlink/", "PkgConfig::LIBNL_ROUTE"},
      {"nftables/", "PkgConfig::LIBNFTABLES"},
      {"systemd/", "PkgConfig::LIBSYSTEMD"},
  };
  for (const auto& [prefix, dep] : kMap) {
    if (absl::StartsWith(p, prefix)) return dep;
  }
  if (inc.angle) {
    // The C library, the kernel's and the C++ standard headers.
    return "";
  }
  return "?";
}

struct Deps {
  std::set<std::string> pub;
  std::set<std::string> priv;
};

// DEPS and PRIVATE_DEPS of the fcvm_cc_library in `cmake`.
Deps ParseDeps(const std::string& cmake) {
  Deps d;
  std::set<std::string>* into = nullptr;
  for (absl::string_view tok : absl::StrSplit(cmake, absl::ByAnyChar(" \t\n()"), absl::SkipEmpty())) {
    if (tok == "DEPS") {
      into = &d.pub;
    } else if (tok == "PRIVATE_DEPS") {
      into = &d.priv;
    } else if (tok == "NAME" || tok == "SRCS" || tok == "HDRS" || tok == "fcvm_cc_library") {
      into = nullptr;
    } else if (into != nullptr) {
      into->insert(std::string(tok));
    }
  }
  return d;
}

TEST(Layering, LibModulesOnlyIncludeModulesBelowThem) {
  std::vector<std::string> problems;
  for (const std::string& module : kLayers) {
    for (const fs::path& f : Sources(fs::path(Root()) / "lib" / module)) {
      for (const Include& inc : Includes(f)) {
        if (!absl::StartsWith(inc.path, "lib/")) continue;
        std::string other = std::vector<std::string>(absl::StrSplit(inc.path, '/'))[1];
        int theirs = LayerOf(other);
        if (other == module) continue;
        if (theirs < 0 || theirs >= LayerOf(module)) {
          problems.push_back(absl::StrCat(f.string(), ":", inc.line, ": lib/", module, " includes ", inc.path,
                                          " (lib/", other, " is not below it)"));
        }
      }
    }
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

TEST(Layering, NoGeneratedProtoBelowDaemon) {
  std::vector<std::string> problems;
  for (const char* dir : {"lib", "pager"}) {
    for (const fs::path& f : Sources(fs::path(Root()) / dir)) {
      for (const Include& inc : Includes(f)) {
        if (absl::EndsWith(inc.path, ".pb.h") || absl::StartsWith(inc.path, "fcvm/v1/")) {
          problems.push_back(absl::StrCat(f.string(), ":", inc.line, ": includes ", inc.path));
        }
      }
    }
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

TEST(Layering, CliUsesTheApiAndLibBaseOnly) {
  std::vector<std::string> problems;
  for (const fs::path& f : Sources(fs::path(Root()) / "cli")) {
    for (const Include& inc : Includes(f)) {
      bool lib_other = absl::StartsWith(inc.path, "lib/") && !absl::StartsWith(inc.path, "lib/base/");
      if (lib_other || absl::StartsWith(inc.path, "daemon/")) {
        problems.push_back(absl::StrCat(f.string(), ":", inc.line, ": cli includes ", inc.path));
      }
    }
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

TEST(Layering, LibTargetsListWhatTheyInclude) {
  std::vector<std::string> problems;
  for (const std::string& module : kLayers) {
    fs::path dir = fs::path(Root()) / "lib" / module;
    Deps listed = ParseDeps(Read(dir / "CMakeLists.txt"));
    std::set<std::string> from_headers, from_sources;
    for (const fs::path& f : Sources(dir)) {
      bool header = f.extension() == ".h";
      for (const Include& inc : Includes(f)) {
        std::string dep = DependencyOf(inc);
        if (dep.empty() || dep == "fcvm_" + module) continue;
        if (dep == "?") {
          problems.push_back(absl::StrCat(f.string(), ":", inc.line, ": unknown third-party include ",
                                          inc.path,
                                          " (teach tests/style/layering_test.cc its CMake target)"));
          continue;
        }
        (header ? from_headers : from_sources).insert(dep);
      }
    }
    for (const std::string& dep : from_headers) {
      if (listed.pub.count(dep) == 0) {
        problems.push_back(absl::StrCat("lib/", module, ": its headers include ", dep,
                                        ", which must be under DEPS (public)"));
      }
    }
    for (const std::string& dep : from_sources) {
      if (from_headers.count(dep) > 0) continue;
      if (listed.priv.count(dep) == 0) {
        problems.push_back(absl::StrCat("lib/", module, ": only its .cc files include ", dep,
                                        ", which must be under PRIVATE_DEPS",
                                        listed.pub.count(dep) > 0 ? " (it is under DEPS)" : ""));
      }
    }
  }
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

}  // namespace
}  // namespace fcvm
