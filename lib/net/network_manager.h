#pragma once

// Per-VM networking for clones of one snapshot.
//
// Every clone of a snapshot believes it has the same IP and MAC address, so
// each VM that asks for a network gets a network namespace of its own
// (Firecracker's documented answer, docs/snapshotting/network-for-clones.md):
//
//   host                          | namespace <prefix>-<vm id>        | guest
//   <prefix>-h<slot> 10.200.S.1/30 <-veth-> veth0 10.200.S.2/30        |
//                                 |  tap0 172.16.0.1/30 <--tap--> eth0 172.16.0.2
//
// Inside the namespace nftables SNATs the guest's fixed address to the VM's
// unique address (10.200.S.2) on the way out and DNATs that unique address to
// the guest on the way in; the host routes 10.200.S.0/30 to the veth. Ports
// published on the host are DNATed to 10.200.S.2:<guest port>, which the
// namespace forwards to the guest. Traffic between two VM namespaces is
// dropped on the host except through published ports. See docs/networking.md.
//
// Everything this creates is named after the VM (namespace "<prefix>-<vm id>"
// bind-mounted on /run/netns, host veth alias = vm id, host table
// "<prefix>-<vm id>") or recorded in the address pool file, so
// ReconcileOrphans can find and remove what a crashed fcvmd left behind.
//
// One NetworkManager per state dir (the address pool is locked).
//
// Thread-safety: all methods may be called from any thread, concurrently for
// different VMs; operations on one VM are refused (FailedPrecondition) while
// another operation on that VM is running. The calling thread never changes
// namespace (the work runs on helper threads that join the namespaces), and
// the host namespace is the one the thread calling Create() was in.

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/unique_fd.h"
#include "lib/net/address_pool.h"

namespace fcvm::net {

struct NetworkOptions {
  // Where the address pool file (net-pool.json) lives; created 0700.
  std::string state_dir;
  // Unique per-VM addresses come from this pool, split into /30s (host end .1,
  // namespace end .2) or /31s.
  std::string pool_cidr = "10.200.0.0/16";
  int subnet_prefix_len = 30;
  // What every guest is configured with (the same in every clone).
  std::string guest_ip = "172.16.0.2";
  std::string gateway_ip = "172.16.0.1";  // put on the tap; the guest's default route
  int guest_prefix_len = 30;
  // The tap Firecracker opens inside the namespace (the same name in every
  // clone, so a snapshot's host_dev_name needs no override).
  std::string tap_name = "tap0";
  // Owner of the tap: root, or the uid the jailer runs Firecracker as.
  uid_t tap_owner_uid = 0;
  // The namespace end of the veth.
  std::string ns_veth_name = "veth0";
  // Names everything fcvm creates: namespaces "<prefix>-<vm id>", host veths
  // "<prefix>-h<slot>", nft tables "<prefix>" (shared, host and namespace) and
  // "<prefix>-<vm id>" (a VM's published ports). A letter first, then
  // [A-Za-z0-9]; short enough that "<prefix>-h<largest slot>" fits IFNAMSIZ.
  std::string name_prefix = "fcvm";
  // When set, traffic from the pool leaving through this host interface is
  // MASQUERADEd (guests reach the outside world).
  std::string uplink;
  // Sets the host's net.ipv4.ip_forward to 1 (needed for published ports
  // reached from other hosts and for the uplink; host-local access does not
  // need it). Never set back to 0: other software may rely on it.
  bool enable_host_forwarding = true;
};

// One VM's network. Owns an fd of its namespace (pass it as
// SpawnOptions.netns_fd when starting Firecracker, so Firecracker opens
// `tap_name` there); the namespace itself lives until Teardown.
struct VmNetwork {
  std::string vm_id;
  std::string netns_name;  // "fcvm-<vm id>": `ip netns exec <netns_name> ...`
  std::string netns_path;  // "/run/netns/<netns_name>"
  UniqueFd netns;
  std::string tap_name;
  Ipv4 guest_ip;
  int guest_prefix_len = 0;
  Ipv4 gateway_ip;
  Cidr subnet;            // the VM's slice of the pool
  Ipv4 vm_ip;             // unique, reachable from the host, DNATed to guest_ip
  Ipv4 host_ip;           // host end of the veth
  std::string host_veth;  // in the host namespace
  std::string ns_veth;    // in the VM namespace
  std::vector<PublishedPort> published;
};

class NetworkManager {
 public:
  // Validates `options`, opens the address pool, and installs the host's
  // shared nft table (inter-VM isolation, optional MASQUERADE). Errors:
  // InvalidArgument for bad options; pool errors (see AddressPool::Open);
  // nft/sysctl errors naming what failed.
  static absl::StatusOr<std::unique_ptr<NetworkManager>> Create(NetworkOptions options);

  // Creates the network of `vm_id`. InvalidArgument for a bad VM id;
  // AlreadyExists when its namespace exists or a host port is taken;
  // ResourceExhausted when the pool is exhausted; otherwise the error of the
  // step that failed, after everything done so far has been undone. The tap
  // is owned by `tap_owner` (a jailed Firecracker's uid, which may open only
  // a tap it owns), else by options().tap_owner_uid.
  absl::StatusOr<VmNetwork> Setup(const std::string& vm_id, const std::vector<PublishedPort>& published = {},
                                  std::optional<uid_t> tap_owner = std::nullopt);

  // The network Setup made earlier (for instance before fcvmd restarted).
  // NotFound when `vm_id` has none.
  absl::StatusOr<VmNetwork> Open(const std::string& vm_id);

  // Removes the VM's host table, veth pair and namespace mount and releases its
  // addresses. Idempotent: OK when nothing is left. Keeps going after an error
  // and returns the first one.
  absl::Status Teardown(const std::string& vm_id);

  // Tears down every network of this prefix whose VM is not in `live`
  // (namespaces, pool entries, host veths, host tables), and returns the VM
  // ids removed. Meant for fcvmd's start-up, before any Setup.
  absl::StatusOr<std::vector<std::string>> ReconcileOrphans(const absl::flat_hash_set<std::string>& live);

  // Deletes the shared host table "<prefix>". For tests and uninstall, once
  // every VM network is gone.
  absl::Status RemoveHostRules();

  const NetworkOptions& options() const { return options_; }
  AddressPool& pool() { return *pool_; }
  std::string NetnsName(const std::string& vm_id) const;
  std::string HostVethName(uint32_t slot) const;
  std::string VmTableName(const std::string& vm_id) const;

 private:
  NetworkManager(NetworkOptions options, std::unique_ptr<AddressPool> pool, UniqueFd host_netns,
                 Ipv4 guest_ip, Ipv4 gateway_ip);

  absl::Status InstallHostRules();
  absl::StatusOr<VmNetwork> SetupLocked(const std::string& vm_id, const std::vector<PublishedPort>& published,
                                        uid_t tap_owner);
  absl::Status TeardownLocked(const std::string& vm_id);
  VmNetwork Describe(const std::string& vm_id, const Allocation& a) const;
  std::string NsRules(const Allocation& a) const;
  std::string HostVmRules(const std::string& vm_id, const Allocation& a) const;

  // Marks `vm_id` busy for the duration of one operation.
  absl::Status Acquire(const std::string& vm_id);
  void Release(const std::string& vm_id);

  const NetworkOptions options_;
  const std::unique_ptr<AddressPool> pool_;
  const UniqueFd host_netns_;
  const Ipv4 guest_ip_;
  const Ipv4 gateway_ip_;

  absl::Mutex mu_;
  absl::flat_hash_set<std::string> busy_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::net
