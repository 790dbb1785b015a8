#pragma once

// The one temporary-directory helper of the tests: a fresh directory under
// /tmp (short, so that Unix socket paths inside it fit in sockaddr_un),
// removed with everything in it when the object goes away.

#include <string>

namespace fcvm::testing {

class TempDir {
 public:
  // `prefix` names the directory ("/tmp/<prefix>-XXXXXX"), for telling
  // leftovers apart. On failure path() is empty and the test fails.
  explicit TempDir(const std::string& prefix = "fcvm-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace fcvm::testing
