#pragma once

// The few rtnetlink operations fcvm needs, through libnl-route-3, plus tap
// creation (a TUNSETIFF ioctl: taps have no rtnetlink "add").
//
// A Netlink object wraps one NETLINK_ROUTE socket, which acts on the network
// namespace of the thread that opened it, wherever it is used afterwards.
// Thread-compatible: one thread at a time per object. Errors name the call and
// the device: "add address 10.200.0.2/30 to veth0: Object exists" (NotFound for
// a missing device, AlreadyExists for a device or address that exists).

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/base/unique_fd.h"
#include "lib/net/address_pool.h"

struct nl_sock;

namespace fcvm::net {

struct LinkInfo {
  std::string name;
  std::string alias;  // IFLA_IFALIAS; fcvm stores the VM id there
  int index = 0;
};

class Netlink {
 public:
  // Opens a socket in the calling thread's network namespace.
  static absl::StatusOr<Netlink> Open();

  Netlink(Netlink&&) noexcept = default;
  Netlink& operator=(Netlink&&) noexcept = default;
  ~Netlink();

  // NotFound when there is no such device.
  absl::StatusOr<int> LinkIndex(const std::string& name);
  absl::StatusOr<LinkInfo> GetLink(const std::string& name);
  absl::Status SetLinkUp(const std::string& name);
  absl::Status SetLinkAlias(const std::string& name, const std::string& alias);
  absl::Status AddAddress(const std::string& name, Ipv4 address, int prefix_len);
  absl::Status AddDefaultRoute(Ipv4 gateway, const std::string& device);
  // Creates the veth pair `name` (in this socket's namespace) <-> `peer_name`,
  // which is created directly inside the namespace `peer_netns_fd`.
  absl::Status CreateVeth(const std::string& name, const std::string& peer_name, int peer_netns_fd);
  // NotFound when there is no such device.
  absl::Status DeleteLink(const std::string& name);
  absl::StatusOr<std::vector<LinkInfo>> ListLinks();

 private:
  struct SockDeleter {
    void operator()(nl_sock* s) const;
  };
  explicit Netlink(nl_sock* sock) : sock_(sock) {}
  std::unique_ptr<nl_sock, SockDeleter> sock_;
};

// Creates a persistent tap `name` owned by `owner_uid` in the calling
// thread's network namespace with the flags Firecracker opens it with
// (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), so Firecracker's own TUNSETIFF attaches
// to it. AlreadyExists when a device of that name exists.
absl::Status CreateTap(const std::string& name, uid_t owner_uid = 0);

// Opens (attaches to) an existing tap, as Firecracker does; the returned fd
// reads and writes frames preceded by a virtio-net header.
absl::StatusOr<UniqueFd> OpenTap(const std::string& name);

}  // namespace fcvm::net
