#pragma once

// The persisted table of per-VM network allocations: which /30 (or /31) of the
// configured pool each VM holds, and which host ports it publishes.
//
// Clones of one snapshot all use the same guest address inside their own
// network namespace; what makes each VM reachable from the host is the unique
// subnet on the veth between its namespace and the host. This table hands out
// those subnets and makes sure no subnet and no published host port is handed
// out twice while it is in use, across restarts of fcvmd: every change is
// written to one JSON file with WriteFileAtomic before it is reported.
//
// Thread-safety: all methods may be called from any thread.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/unique_fd.h"

namespace fcvm::net {

// An IPv4 address in host byte order.
struct Ipv4 {
  uint32_t value = 0;
  std::string ToString() const;
  friend bool operator==(Ipv4 a, Ipv4 b) { return a.value == b.value; }
};

// "10.200.0.1" -> Ipv4. InvalidArgument otherwise.
absl::StatusOr<Ipv4> ParseIpv4(absl::string_view text);

struct Cidr {
  Ipv4 network;
  int prefix_len = 0;
  std::string ToString() const;  // "10.200.0.0/16"
  uint64_t size() const { return uint64_t{1} << (32 - prefix_len); }
};

// "10.200.0.0/16" -> Cidr. InvalidArgument when malformed or when host bits
// are set.
absl::StatusOr<Cidr> ParseCidr(absl::string_view text);

enum class Protocol { kTcp, kUdp };
absl::string_view ProtocolName(Protocol p);  // "tcp", "udp"

// Host port -> guest port, reachable on every local address of the host.
struct PublishedPort {
  Protocol protocol = Protocol::kTcp;
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
  friend bool operator==(const PublishedPort& a, const PublishedPort& b) {
    return a.protocol == b.protocol && a.host_port == b.host_port && a.guest_port == b.guest_port;
  }
};

// One VM's slice of the pool. With /30 subnets: host end = network + 1,
// namespace end = network + 2; with /31: network + 0 and network + 1.
struct Allocation {
  uint32_t slot = 0;
  Cidr subnet;
  Ipv4 host_ip;  // the host end of the veth: the VM namespace's gateway
  Ipv4 vm_ip;    // the namespace end: the VM's unique, host-reachable address
  std::vector<PublishedPort> published;
};

class AddressPool {
 public:
  // Opens (or creates, on first Allocate) the table at `path`, splitting
  // `pool` into subnets of `subnet_prefix_len` (30 or 31). InvalidArgument for
  // a bad split; FailedPrecondition when the file exists but was written for
  // another pool or split (renumbering while VMs run would reuse addresses);
  // DataLoss when the file cannot be parsed. The table is locked (flock on
  // "<path>.lock") for the pool's lifetime: FailedPrecondition when another
  // AddressPool, in this or another process, holds it.
  static absl::StatusOr<std::unique_ptr<AddressPool>> Open(std::string path, Cidr pool,
                                                           int subnet_prefix_len);

  // Reserves the lowest free subnet for `vm_id` and records its published
  // ports, and persists the table. Returns the existing allocation unchanged
  // when `vm_id` already holds one with the same ports (AlreadyExists if the
  // ports differ). ResourceExhausted when every subnet is in use;
  // AlreadyExists when a host port is already published (naming the VM that
  // holds it) or listed twice.
  absl::StatusOr<Allocation> Allocate(const std::string& vm_id, const std::vector<PublishedPort>& published);

  // Frees `vm_id`'s subnet and ports and persists the table. OK when it holds
  // none.
  absl::Status Release(const std::string& vm_id);

  // NotFound when `vm_id` holds nothing.
  absl::StatusOr<Allocation> Lookup(const std::string& vm_id) const;

  // vm id -> allocation, for reconciliation.
  std::map<std::string, Allocation> All() const;

  uint64_t capacity() const { return capacity_; }
  const Cidr& pool() const { return pool_; }
  int subnet_prefix_len() const { return subnet_prefix_len_; }
  const std::string& path() const { return path_; }

 private:
  AddressPool(std::string path, Cidr pool, int subnet_prefix_len);
  absl::Status Load();
  Allocation MakeAllocation(uint32_t slot) const;
  absl::Status Persist() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const Cidr pool_;
  const int subnet_prefix_len_;
  const uint64_t capacity_;
  UniqueFd lock_;

  mutable absl::Mutex mu_;
  std::map<std::string, Allocation> by_vm_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::string> by_slot_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::net
