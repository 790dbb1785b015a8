#pragma once

// Named network namespaces, made the way `ip netns add` makes them: a fresh
// namespace whose /proc/<tid>/ns/net is bind-mounted onto /run/netns/<name>, so
// it outlives every process and `ip netns exec <name>` / `ip -n <name>` work
// for debugging.
//
// Netlink and nftables sockets belong to the namespace of the thread that
// opens them, so all in-namespace configuration runs on a short-lived helper
// thread that has joined the namespace (setns/unshare affect only the calling
// thread for CLONE_NEWNET); the caller's thread never changes namespace.
//
// Thread-safety: every function may be called from any thread.

#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/base/unique_fd.h"

namespace fcvm::net {

inline constexpr char kNetnsRunDir[] = "/run/netns";

// "/run/netns/<name>".
std::string NetnsPath(const std::string& name);

// Creates the namespace `name`, runs `init` on a helper thread inside it, and
// returns an fd for it (O_CLOEXEC; pass it to SpawnOptions.netns_fd or
// RunInNetns). AlreadyExists when /run/netns/<name> exists. When `init` fails
// the namespace is removed again and init's status is returned.
absl::StatusOr<UniqueFd> CreateNamedNetns(const std::string& name, absl::FunctionRef<absl::Status()> init);

// Unmounts and removes /run/netns/<name>. The namespace itself goes away once
// no process, fd or mount holds it. OK when it does not exist.
absl::Status DeleteNamedNetns(const std::string& name);

// NotFound when there is no such namespace.
absl::StatusOr<UniqueFd> OpenNamedNetns(const std::string& name);

// Names under /run/netns (empty when the directory does not exist).
absl::StatusOr<std::vector<std::string>> ListNamedNetns();

// Runs `fn` on a helper thread that has joined the namespace `netns_fd`, and
// returns its status (or the setns error).
absl::Status RunInNetns(int netns_fd, absl::FunctionRef<absl::Status()> fn);

// Writes `value` to /proc/sys/<key> ("net/ipv4/ip_forward") as seen by the
// calling thread (net sysctls are per namespace: call it inside RunInNetns).
absl::Status WriteSysctl(const std::string& key, const std::string& value);
absl::StatusOr<std::string> ReadSysctl(const std::string& key);

// A named namespace deleted on destruction; for tests and tools.
class ScopedNetns {
 public:
  static absl::StatusOr<ScopedNetns> Create(const std::string& name);
  ScopedNetns() = default;
  ScopedNetns(ScopedNetns&& other) noexcept
      : name_(std::exchange(other.name_, {})), fd_(std::move(other.fd_)) {}
  ScopedNetns& operator=(ScopedNetns&& other) noexcept;
  ~ScopedNetns();

  const std::string& name() const { return name_; }
  int fd() const { return fd_.get(); }

 private:
  ScopedNetns(std::string name, UniqueFd fd) : name_(std::move(name)), fd_(std::move(fd)) {}
  void Reset();
  std::string name_;
  UniqueFd fd_;
};

}  // namespace fcvm::net
