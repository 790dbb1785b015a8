#include "lib/net/netlink.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/base/unique_fd.h"

namespace fcvm::net {
namespace {

absl::Status NlError(int err, absl::string_view what) {
  if (err < 0) err = -err;
  std::string msg = absl::StrCat(what, ": ", nl_geterror(err));
  switch (err) {
    case NLE_OBJ_NOTFOUND:
    case NLE_NODEV:
      return absl::NotFoundError(msg);
    case NLE_EXIST:
      return absl::AlreadyExistsError(msg);
    case NLE_PERM:
      return absl::PermissionDeniedError(msg);
    case NLE_NOMEM:
      return absl::ResourceExhaustedError(msg);
    case NLE_INVAL:
    case NLE_RANGE:
      return absl::InvalidArgumentError(msg);
    case NLE_BUSY:
    case NLE_AGAIN:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

struct LinkPut {
  void operator()(rtnl_link* l) const { rtnl_link_put(l); }
};
struct AddrPut {
  void operator()(rtnl_addr* a) const { rtnl_addr_put(a); }
};
struct NlAddrPut {
  void operator()(nl_addr* a) const { nl_addr_put(a); }
};
struct RoutePut {
  void operator()(rtnl_route* r) const { rtnl_route_put(r); }
};
struct CachePut {
  void operator()(nl_cache* c) const { nl_cache_free(c); }
};
using LinkPtr = std::unique_ptr<rtnl_link, LinkPut>;
using NlAddrPtr = std::unique_ptr<nl_addr, NlAddrPut>;

absl::StatusOr<NlAddrPtr> MakeAddr(Ipv4 ip, int prefix_len) {
  nl_addr* a = nullptr;
  std::string text = absl::StrCat(ip.ToString(), "/", prefix_len);
  if (int err = nl_addr_parse(text.c_str(), AF_INET, &a); err < 0) {
    return NlError(err, absl::StrCat("parse address ", text));
  }
  return NlAddrPtr(a);
}

absl::Status TapIoctl(int fd, const std::string& name, bool persist, uid_t owner = 0) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("bad tap name \"", name, "\""));
  }
  ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) return ErrnoError(absl::StrCat("TUNSETIFF ", name));
  if (persist) {
    if (ioctl(fd, TUNSETOWNER, static_cast<unsigned long>(owner)) < 0) {
      return ErrnoError(absl::StrCat("TUNSETOWNER ", name));
    }
    if (ioctl(fd, TUNSETPERSIST, 1) < 0) return ErrnoError(absl::StrCat("TUNSETPERSIST ", name));
  }
  return absl::OkStatus();
}

}  // namespace

void Netlink::SockDeleter::operator()(nl_sock* s) const { nl_socket_free(s); }

absl::StatusOr<Netlink> Netlink::Open() {
  nl_sock* sock = nl_socket_alloc();
  if (sock == nullptr) return absl::ResourceExhaustedError("nl_socket_alloc failed");
  Netlink nl(sock);
  if (int err = nl_connect(sock, NETLINK_ROUTE); err < 0) {
    return NlError(err, "connect rtnetlink socket");
  }
  // libnl's sockets are not close-on-exec by default; fcvm spawns children.
  if (int fd = nl_socket_get_fd(sock); fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return nl;
}

Netlink::~Netlink() = default;

absl::StatusOr<int> Netlink::LinkIndex(const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &raw); err < 0) {
    return NlError(err, absl::StrCat("look up device ", name));
  }
  LinkPtr link(raw);
  return rtnl_link_get_ifindex(link.get());
}

absl::StatusOr<LinkInfo> Netlink::GetLink(const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &raw); err < 0) {
    return NlError(err, absl::StrCat("look up device ", name));
  }
  LinkPtr link(raw);
  LinkInfo info;
  info.name = name;
  if (const char* a = rtnl_link_get_ifalias(link.get())) info.alias = a;
  info.index = rtnl_link_get_ifindex(link.get());
  return info;
}

absl::Status Netlink::SetLinkUp(const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &raw); err < 0) {
    return NlError(err, absl::StrCat("look up device ", name));
  }
  LinkPtr link(raw);
  LinkPtr change(rtnl_link_alloc());
  rtnl_link_set_flags(change.get(), IFF_UP);
  if (int err = rtnl_link_change(sock_.get(), link.get(), change.get(), 0); err < 0) {
    return NlError(err, absl::StrCat("set ", name, " up"));
  }
  return absl::OkStatus();
}

absl::Status Netlink::SetLinkAlias(const std::string& name, const std::string& alias) {
  rtnl_link* raw = nullptr;
  if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &raw); err < 0) {
    return NlError(err, absl::StrCat("look up device ", name));
  }
  LinkPtr link(raw);
  LinkPtr change(rtnl_link_alloc());
  rtnl_link_set_ifalias(change.get(), alias.c_str());
  if (int err = rtnl_link_change(sock_.get(), link.get(), change.get(), 0); err < 0) {
    return NlError(err, absl::StrCat("set alias of ", name));
  }
  return absl::OkStatus();
}

absl::Status Netlink::AddAddress(const std::string& name, Ipv4 address, int prefix_len) {
  const std::string what = absl::StrCat("add address ", address.ToString(), "/", prefix_len, " to ", name);
  absl::StatusOr<int> index = LinkIndex(name);
  if (!index.ok()) return Annotate(index.status(), what);
  ASSIGN_OR_RETURN(NlAddrPtr local, MakeAddr(address, prefix_len));
  std::unique_ptr<rtnl_addr, AddrPut> addr(rtnl_addr_alloc());
  rtnl_addr_set_ifindex(addr.get(), *index);
  if (int err = rtnl_addr_set_local(addr.get(), local.get()); err < 0) return NlError(err, what);
  if (int err = rtnl_addr_add(sock_.get(), addr.get(), 0); err < 0) return NlError(err, what);
  return absl::OkStatus();
}

absl::Status Netlink::AddDefaultRoute(Ipv4 gateway, const std::string& device) {
  const std::string what = absl::StrCat("add default route via ", gateway.ToString(), " dev ", device);
  absl::StatusOr<int> index = LinkIndex(device);
  if (!index.ok()) return Annotate(index.status(), what);
  nl_addr* raw_dst = nullptr;
  if (int err = nl_addr_parse("default", AF_INET, &raw_dst); err < 0) return NlError(err, what);
  NlAddrPtr dst(raw_dst);
  ASSIGN_OR_RETURN(NlAddrPtr gw, MakeAddr(gateway, 32));
  std::unique_ptr<rtnl_route, RoutePut> route(rtnl_route_alloc());
  rtnl_route_set_family(route.get(), AF_INET);
  rtnl_route_set_table(route.get(), RT_TABLE_MAIN);
  if (int err = rtnl_route_set_dst(route.get(), dst.get()); err < 0) return NlError(err, what);
  rtnl_nexthop* nh = rtnl_route_nh_alloc();  // owned by the route once added
  rtnl_route_nh_set_ifindex(nh, *index);
  rtnl_route_nh_set_gateway(nh, gw.get());
  rtnl_route_add_nexthop(route.get(), nh);
  if (int err = rtnl_route_add(sock_.get(), route.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0) {
    return NlError(err, what);
  }
  return absl::OkStatus();
}

absl::Status Netlink::CreateVeth(const std::string& name, const std::string& peer_name, int peer_netns_fd) {
  const std::string what = absl::StrCat("create veth pair ", name, " <-> ", peer_name);
  for (const std::string* n : {&name, &peer_name}) {
    if (n->empty() || n->size() >= IFNAMSIZ) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": device names must be 1-", IFNAMSIZ - 1, " bytes"));
    }
  }
  LinkPtr link(rtnl_link_veth_alloc());
  if (!link) return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  rtnl_link_set_name(link.get(), name.c_str());
  rtnl_link* peer = rtnl_link_veth_get_peer(link.get());  // takes a reference
  rtnl_link_set_name(peer, peer_name.c_str());
  rtnl_link_set_ns_fd(peer, peer_netns_fd);
  rtnl_link_put(peer);
  if (int err = rtnl_link_add(sock_.get(), link.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0) {
    return NlError(err, what);
  }
  return absl::OkStatus();
}

absl::Status Netlink::DeleteLink(const std::string& name) {
  LinkPtr link(rtnl_link_alloc());
  rtnl_link_set_name(link.get(), name.c_str());
  if (int err = rtnl_link_delete(sock_.get(), link.get()); err < 0) {
    return NlError(err, absl::StrCat("delete device ", name));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LinkInfo>> Netlink::ListLinks() {
  nl_cache* raw = nullptr;
  if (int err = rtnl_link_alloc_cache(sock_.get(), AF_UNSPEC, &raw); err < 0) {
    return NlError(err, "list devices");
  }
  std::unique_ptr<nl_cache, CachePut> cache(raw);
  std::vector<LinkInfo> out;
  for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
    auto* l = reinterpret_cast<rtnl_link*>(o);
    LinkInfo info;
    if (const char* n = rtnl_link_get_name(l)) info.name = n;
    if (const char* a = rtnl_link_get_ifalias(l)) info.alias = a;
    info.index = rtnl_link_get_ifindex(l);
    out.push_back(std::move(info));
  }
  return out;
}

absl::Status CreateTap(const std::string& name, uid_t owner_uid) {
  UniqueFd fd(open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  if (!fd) return ErrnoError("open /dev/net/tun");
  // TUNSETIFF on an existing tap attaches instead of failing: refuse to adopt.
  ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
  absl::StatusOr<int> existing = nl.LinkIndex(name);
  if (existing.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("create tap ", name, ": device exists"));
  }
  if (!absl::IsNotFound(existing.status())) return existing.status();
  return TapIoctl(fd.get(), name, /*persist=*/true, owner_uid);
}

absl::StatusOr<UniqueFd> OpenTap(const std::string& name) {
  UniqueFd fd(open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  if (!fd) return ErrnoError("open /dev/net/tun");
  RETURN_IF_ERROR(TapIoctl(fd.get(), name, /*persist=*/false));
  return fd;
}

}  // namespace fcvm::net
