#include "lib/base/flags.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fcvm {

void FlagParser::String(std::string name, std::string* target, std::string help, std::string value_name) {
  flags_.push_back({std::move(name), Kind::kString, target, std::move(help), std::move(value_name)});
}
void FlagParser::Bool(std::string name, bool* target, std::string help) {
  flags_.push_back({std::move(name), Kind::kBool, target, std::move(help), ""});
}
void FlagParser::Int(std::string name, int64_t* target, std::string help, std::string value_name) {
  flags_.push_back({std::move(name), Kind::kInt, target, std::move(help), std::move(value_name)});
}
void FlagParser::Duration(std::string name, absl::Duration* target, std::string help) {
  flags_.push_back({std::move(name), Kind::kDuration, target, std::move(help), "DURATION"});
}
void FlagParser::List(std::string name, std::vector<std::string>* target, std::string help,
                      std::string value_name) {
  flags_.push_back({std::move(name), Kind::kList, target, std::move(help), std::move(value_name)});
}

const FlagParser::Flag* FlagParser::Find(const std::string& name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

absl::StatusOr<std::vector<std::string>> FlagParser::Parse(const std::vector<std::string>& args,
                                                           bool stop_at_positional) {
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      positional.insert(positional.end(), args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      if (stop_at_positional) {
        positional.insert(positional.end(), args.begin() + static_cast<long>(i), args.end());
        break;
      }
      if (absl::StartsWith(arg, "-") && arg.size() > 1) {
        return absl::InvalidArgumentError(absl::StrCat("unknown option '", arg, "' (see --help)"));
      }
      positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = Find(name);
    if (flag == nullptr && absl::StartsWith(name, "no-") && !has_value) {
      const Flag* negated = Find(name.substr(3));
      if (negated != nullptr && negated->kind == Kind::kBool) {
        *static_cast<bool*>(negated->target) = false;
        continue;
      }
    }
    if (flag == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("unknown option '--", name, "' (see --help)"));
    if (flag->kind == Kind::kBool) {
      bool v = true;
      if (has_value && !absl::SimpleAtob(value, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": not a boolean: '", value, "'"));
      }
      *static_cast<bool*>(flag->target) = v;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    switch (flag->kind) {
      case Kind::kString:
        *static_cast<std::string*>(flag->target) = value;
        break;
      case Kind::kList:
        static_cast<std::vector<std::string>*>(flag->target)->push_back(value);
        break;
      case Kind::kInt:
        if (!absl::SimpleAtoi(value, static_cast<int64_t*>(flag->target))) {
          return absl::InvalidArgumentError(absl::StrCat("--", name, ": not an integer: '", value, "'"));
        }
        break;
      case Kind::kDuration:
        if (!absl::ParseDuration(value, static_cast<absl::Duration*>(flag->target))) {
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, ": not a duration: '", value, "' (e.g. 500ms, 5s, 2m)"));
        }
        break;
      case Kind::kBool:
        break;
    }
  }
  return positional;
}

std::string FlagParser::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n");
  if (flags_.empty()) return out;
  out += "\noptions:\n";
  size_t width = 0;
  std::vector<std::string> heads;
  for (const Flag& f : flags_) {
    std::string head = absl::StrCat("--", f.name);
    if (!f.value_name.empty()) absl::StrAppend(&head, " ", f.value_name);
    width = std::max(width, head.size());
    heads.push_back(head);
  }
  for (size_t i = 0; i < flags_.size(); ++i) {
    absl::StrAppend(&out, absl::StrFormat("  %-*s  %s\n", static_cast<int>(width), heads[i], flags_[i].help));
  }
  absl::StrAppend(&out, absl::StrFormat("  %-*s  %s\n", static_cast<int>(width), "--help", "show this help"));
  return out;
}

}  // namespace fcvm
