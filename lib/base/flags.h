#pragma once

// A small command-line parser for fcvmd and fcvmctl: GNU-style long options
// (--name=value, --name value, --flag, --no-flag), "--" ending options, and
// generated --help text. absl::flags would force underscores and global
// state; users of a host tool expect --state-dir.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fcvm {

class FlagParser {
 public:
  // `usage` is the first line of --help ("fcvmctl [flags] <command>").
  explicit FlagParser(std::string usage) : usage_(std::move(usage)) {}

  // Registers options. `target` keeps its value when the option is absent and
  // must outlive the parser.
  void String(std::string name, std::string* target, std::string help, std::string value_name = "VALUE");
  void Bool(std::string name, bool* target, std::string help);
  void Int(std::string name, int64_t* target, std::string help, std::string value_name = "N");
  void Duration(std::string name, absl::Duration* target, std::string help);
  // A repeatable option; each occurrence appends.
  void List(std::string name, std::vector<std::string>* target, std::string help,
            std::string value_name = "VALUE");

  // Parses `args` (without the program name). Returns the positional arguments.
  // With stop_at_positional, parsing ends at the first positional argument and
  // it and everything after it are returned untouched (for subcommands).
  // InvalidArgument names the offending option. "--help"/"-h" sets
  // help_requested() and returns OK.
  absl::StatusOr<std::vector<std::string>> Parse(const std::vector<std::string>& args,
                                                 bool stop_at_positional = false);

  bool help_requested() const { return help_requested_; }
  std::string Help() const;

 private:
  enum class Kind { kString, kBool, kInt, kDuration, kList };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    std::string value_name;
  };
  const Flag* Find(const std::string& name) const;

  std::string usage_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace fcvm
