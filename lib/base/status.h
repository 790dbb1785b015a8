#pragma once

// Status helpers shared by every fcvm module.
//
// Debian 12's abseil (20220623) ships neither status macros nor matchers, so the
// macros below carry the names later abseil releases use, to make a future
// switch a deletion.

#include <cerrno>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fcvm {

// Builds a status for a failed system call. `what` names the call and its
// object ("open /var/lib/fcvm/x"), the result reads "open /var/lib/fcvm/x: No
// such file or directory" and its code follows the errno (ENOENT -> NotFound,
// EEXIST -> AlreadyExists, ENOMEM/ENOSPC -> ResourceExhausted, ...).
absl::Status ErrnoError(int err, absl::string_view what);

// Same, with errno read at the call.
inline absl::Status ErrnoError(absl::string_view what) { return ErrnoError(errno, what); }

// Returns `status` with "prefix: " in front of its message and the same code.
// Each layer that adds meaning prefixes one short phrase.
absl::Status Annotate(const absl::Status& status, absl::string_view prefix);

}  // namespace fcvm

#define FCVM_STATUS_CONCAT_INNER_(a, b) a##b
#define FCVM_STATUS_CONCAT_(a, b) FCVM_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status fcvm_status_ = (expr);        \
    if (!fcvm_status_.ok()) return fcvm_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); on
// error returns its status, otherwise moves the value into `lhs`, which may be
// a declaration ("auto fd") or an existing variable.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  FCVM_ASSIGN_OR_RETURN_IMPL_(FCVM_STATUS_CONCAT_(fcvm_statusor_, __LINE__), lhs, rexpr)

#define FCVM_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)  \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
