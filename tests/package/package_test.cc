// The Debian package, for real: cpack builds it from this (release) build
// tree, dpkg installs it on this machine, every file must have landed and
// work (fcvmctl, fcvmd, fcvm-pager run; systemd-analyze verifies the unit),
// and dpkg --purge must leave nothing behind. The package is purged even when
// a check fails. Skipped, saying why, without root or the tools, or when an
// fcvm package or files at its paths are already on the machine (the test
// never touches an operator's install). `ctest -L package`.

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace fcvm {
namespace {

using ::fcvm::testing::CommandResult;
using ::fcvm::testing::RunCommand;
using ::testing::HasSubstr;

// What the package must install (absolute paths on the target system).
const std::vector<std::string> kExpected = {
    "/usr/sbin/fcvmd",
    "/usr/bin/fcvmctl",
    "/usr/bin/fcvm-pager",
    "/lib/systemd/system/fcvmd.service",
    "/etc/default/fcvmd",
    "/usr/share/doc/fcvm/README.md",
    "/usr/share/doc/fcvm/architecture.md",
    "/usr/share/doc/fcvm/operations.md",
    "/usr/share/doc/fcvm/metrics.md",
};

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Follows symlinks: /lib is one on merged-/usr systems, a directory in the package.
bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Which(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin"}) {
    std::string p = absl::StrCat(dir, "/", name);
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::string Describe(const CommandResult& r) {
  return absl::StrCat("exit ", r.code, "\nstdout:\n", r.out, "\nstderr:\n", r.err);
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view l : absl::StrSplit(text, '\n', absl::SkipEmpty())) out.emplace_back(l);
  return out;
}

bool PackageInstalled() {
  CommandResult r = RunCommand({Which("dpkg-query"), "-W", "-f=${Status}", "fcvm"});
  return r.code == 0 && absl::StrContains(r.out, "ok installed");
}

class PackageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to install a package with dpkg";
    for (const char* tool : {"dpkg", "dpkg-deb", "dpkg-query", "dpkg-shlibdeps", "systemd-analyze"}) {
      if (Which(tool).empty()) {
        GTEST_SKIP() << tool << " not installed (packages dpkg, dpkg-dev, systemd; scripts/setup-deps.sh)";
      }
    }
    if (access(FCVM_CPACK, X_OK) != 0) GTEST_SKIP() << "cpack not found at " << FCVM_CPACK;
    CommandResult status = RunCommand({Which("dpkg-query"), "-W", "-f=${Status}", "fcvm"});
    if (status.code == 0 && !absl::StrContains(status.out, "not-installed")) {
      GTEST_SKIP() << "an fcvm package is on this machine already (" << status.out << "); not touching it";
    }
    for (const std::string& path : kExpected) {
      if (Exists(path)) GTEST_SKIP() << path << " exists and is not from the package; not overwriting it";
    }
    char dir[] = "/tmp/fcvm-package-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }

  void TearDown() override {
    if (!dir_.empty()) {
      EXPECT_OK(RemoveTree(dir_));
    }
  }

  std::string dir_;
};

TEST_F(PackageTest, InstallsWorksAndPurgesCleanly) {
  // Build the package from this build tree.
  CommandResult cpack = RunCommand(
      {FCVM_CPACK, "-G", "DEB", "--config", absl::StrCat(FCVM_BUILD_DIR, "/CPackConfig.cmake"), "-B", dir_},
      absl::Minutes(10));
  ASSERT_EQ(cpack.code, 0) << Describe(cpack);
  std::string deb;
  if (DIR* d = opendir(dir_.c_str())) {
    while (dirent* e = readdir(d)) {
      if (absl::EndsWith(e->d_name, ".deb")) deb = absl::StrCat(dir_, "/", e->d_name);
    }
    closedir(d);
  }
  ASSERT_FALSE(deb.empty()) << "no .deb in " << dir_ << "\n" << Describe(cpack);

  // Its control data.
  CommandResult fields =
      RunCommand({Which("dpkg-deb"), "-f", deb, "Package", "Version", "Depends", "Section"});
  ASSERT_EQ(fields.code, 0) << Describe(fields);
  EXPECT_THAT(fields.out, HasSubstr("Package: fcvm\n"));
  EXPECT_THAT(fields.out, HasSubstr(absl::StrCat("Version: ", FCVM_VERSION, "\n")));
  EXPECT_THAT(fields.out, HasSubstr("Section: admin\n"));
  // Depends by Debian runtime package names, from dpkg-shlibdeps.
  for (const char* dep :
       {"libc6", "libstdc++6", "libgrpc++1", "libprotobuf", "libcurl4", "liburing2", "libsystemd0"}) {
    EXPECT_THAT(fields.out, HasSubstr(dep)) << "Depends lacks " << dep;
  }
  CommandResult conffiles = RunCommand({Which("dpkg-deb"), "-I", deb, "conffiles"});
  EXPECT_EQ(conffiles.out, "/etc/default/fcvmd\n") << Describe(conffiles);
  CommandResult contents = RunCommand({Which("dpkg-deb"), "-c", deb});
  ASSERT_EQ(contents.code, 0) << Describe(contents);
  for (const std::string& path : kExpected) EXPECT_THAT(contents.out, HasSubstr(" ." + path)) << path;

  // Install; from here on the package is purged whatever happens.
  absl::Cleanup purge_on_failure = [] { RunCommand({Which("dpkg"), "--purge", "fcvm"}); };
  CommandResult install = RunCommand({Which("dpkg"), "-i", deb}, absl::Minutes(5));
  ASSERT_EQ(install.code, 0) << Describe(install);
  ASSERT_TRUE(PackageInstalled());

  // Every file dpkg says it installed is there, and what we expect is among them.
  CommandResult listed = RunCommand({Which("dpkg"), "-L", "fcvm"});
  ASSERT_EQ(listed.code, 0) << Describe(listed);
  std::vector<std::string> files = Lines(listed.out);
  std::set<std::string> file_set(files.begin(), files.end());
  for (const std::string& f : files) EXPECT_TRUE(Exists(f)) << f << " listed by dpkg -L but missing";
  for (const std::string& path : kExpected) {
    EXPECT_TRUE(file_set.count(path)) << path << " not installed";
    EXPECT_TRUE(Exists(path)) << path;
  }
  for (const char* bin : {"/usr/sbin/fcvmd", "/usr/bin/fcvmctl", "/usr/bin/fcvm-pager"}) {
    struct stat st;
    ASSERT_EQ(stat(bin, &st), 0) << bin;
    EXPECT_EQ(st.st_mode & 07777, 0755u) << bin;
  }
  ASSERT_OK_AND_ASSIGN(std::string installed_default, ReadFile("/etc/default/fcvmd"));
  ASSERT_OK_AND_ASSIGN(std::string source_default,
                       ReadFile(absl::StrCat(FCVM_SOURCE_DIR, "/systemd/fcvmd.default")));
  EXPECT_EQ(installed_default, source_default);

  // The binaries run with the libraries the package depends on. fcvmctl has
  // no daemon to talk to: it prints its own version, then a clear error.
  std::string absent = dir_ + "/no-fcvmd.sock";
  CommandResult version = RunCommand({"/usr/bin/fcvmctl", "--socket", absent, "version"}, absl::Seconds(60));
  EXPECT_EQ(version.code, 1) << Describe(version);
  EXPECT_EQ(version.out, absl::StrCat("fcvmctl ", FCVM_VERSION, "\n")) << Describe(version);
  EXPECT_THAT(version.err, HasSubstr(absl::StrCat("cannot reach fcvmd at ", absent))) << Describe(version);
  CommandResult daemon_help = RunCommand({"/usr/sbin/fcvmd", "--help"});
  EXPECT_EQ(daemon_help.code, 0) << Describe(daemon_help);
  EXPECT_THAT(daemon_help.out, HasSubstr("--state-dir"));
  CommandResult pager_help = RunCommand({"/usr/bin/fcvm-pager", "--help"});
  EXPECT_EQ(pager_help.code, 0) << Describe(pager_help);
  EXPECT_THAT(pager_help.out, HasSubstr("fcvm-pager"));

  // The installed unit passes systemd's own checks (offline: it also checks
  // that ExecStart's binary exists).
  CommandResult verify =
      RunCommand({Which("systemd-analyze"), "verify", "/lib/systemd/system/fcvmd.service"});
  EXPECT_EQ(verify.code, 0) << Describe(verify);
  EXPECT_EQ(verify.out + verify.err, "") << Describe(verify);

  // Purge: nothing of the package is left, conffile included.
  std::move(purge_on_failure).Cancel();
  CommandResult purge = RunCommand({Which("dpkg"), "--purge", "fcvm"}, absl::Minutes(5));
  ASSERT_EQ(purge.code, 0) << Describe(purge);
  EXPECT_FALSE(PackageInstalled());
  for (const std::string& f : files) {
    // Shared directories (/usr/bin, /etc/default, ...) stay; the package's own go.
    if (f != "/usr/share/doc/fcvm" && std::find(kExpected.begin(), kExpected.end(), f) == kExpected.end() &&
        IsDir(f)) {
      continue;
    }
    EXPECT_FALSE(Exists(f)) << f << " left behind by dpkg --purge";
  }
  CommandResult after = RunCommand({Which("dpkg-query"), "-W", "-f=${Status}", "fcvm"});
  EXPECT_TRUE(after.code != 0 || absl::StrContains(after.out, "not-installed")) << Describe(after);
}

}  // namespace
}  // namespace fcvm
