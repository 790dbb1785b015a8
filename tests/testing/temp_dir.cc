#include "tests/testing/temp_dir.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>

#include "gtest/gtest.h"
#include "lib/base/file_util.h"

namespace fcvm::testing {

TempDir::TempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << tmpl << ": " << std::strerror(errno);
    return;
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  if (absl::Status st = RemoveTree(path_); !st.ok()) ADD_FAILURE() << "remove " << path_ << ": " << st;
}

}  // namespace fcvm::testing
