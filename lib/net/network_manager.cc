#include "lib/net/network_manager.h"

#include <fcntl.h>
#include <net/if.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/base/file_util.h"
#include "lib/base/names.h"
#include "lib/base/status.h"
#include "lib/net/netlink.h"
#include "lib/net/netns.h"
#include "lib/net/nft.h"
#include "spdlog/spdlog.h"

namespace fcvm::net {
namespace {

constexpr char kPoolFile[] = "net-pool.json";

int Digits(uint64_t v) {
  int n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

bool SameSubnet(Ipv4 a, Ipv4 b, int prefix_len) {
  uint32_t mask = prefix_len == 0 ? 0 : ~uint32_t{0} << (32 - prefix_len);
  return (a.value & mask) == (b.value & mask);
}

// Keeps the first error.
void Merge(absl::Status& first, absl::Status st) {
  if (first.ok() && !st.ok()) first = std::move(st);
}

absl::Status IgnoreNotFound(absl::Status st) { return absl::IsNotFound(st) ? absl::OkStatus() : st; }

}  // namespace

NetworkManager::NetworkManager(NetworkOptions options, std::unique_ptr<AddressPool> pool, UniqueFd host_netns,
                               Ipv4 guest_ip, Ipv4 gateway_ip)
    : options_(std::move(options)),
      pool_(std::move(pool)),
      host_netns_(std::move(host_netns)),
      guest_ip_(guest_ip),
      gateway_ip_(gateway_ip) {}

absl::StatusOr<std::unique_ptr<NetworkManager>> NetworkManager::Create(NetworkOptions options) {
  auto invalid = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("network options: ", why));
  };
  if (options.state_dir.empty()) return invalid("state_dir is empty");
  const std::string& p = options.name_prefix;
  if (p.empty() || !absl::ascii_isalpha(p[0]) ||
      !std::all_of(p.begin(), p.end(), [](char c) { return absl::ascii_isalnum(c); })) {
    return invalid(absl::StrCat("name_prefix \"", p, "\" must be a letter then letters/digits"));
  }
  for (const std::string* dev : {&options.tap_name, &options.ns_veth_name}) {
    if (dev->empty() || dev->size() >= IFNAMSIZ || dev->find('/') != std::string::npos) {
      return invalid(absl::StrCat("device name \"", *dev, "\" must be 1-15 bytes"));
    }
  }
  if (options.tap_name == options.ns_veth_name) return invalid("tap and veth names are equal");
  ASSIGN_OR_RETURN(Ipv4 guest_ip, ParseIpv4(options.guest_ip));
  ASSIGN_OR_RETURN(Ipv4 gateway_ip, ParseIpv4(options.gateway_ip));
  if (options.guest_prefix_len < 8 || options.guest_prefix_len > 30 ||
      !SameSubnet(guest_ip, gateway_ip, options.guest_prefix_len) || guest_ip == gateway_ip) {
    return invalid(absl::StrCat("guest ", options.guest_ip, " and gateway ", options.gateway_ip,
                                " must be distinct addresses of one /8../30 subnet"));
  }
  ASSIGN_OR_RETURN(Cidr pool_cidr, ParseCidr(options.pool_cidr));
  if (SameSubnet(pool_cidr.network, guest_ip, std::min(pool_cidr.prefix_len, options.guest_prefix_len))) {
    return invalid(absl::StrCat("pool ", options.pool_cidr, " overlaps the guest subnet"));
  }
  if (options.subnet_prefix_len >= pool_cidr.prefix_len && options.subnet_prefix_len <= 31) {
    const uint64_t last_slot = (uint64_t{1} << (options.subnet_prefix_len - pool_cidr.prefix_len)) - 1;
    if (p.size() + 2 + Digits(last_slot) >= IFNAMSIZ) {
      return invalid(absl::StrCat("name_prefix \"", p, "\" is too long for host veth names like \"", p, "-h",
                                  last_slot, "\" (15 bytes at most)"));
    }
  }
  RETURN_IF_ERROR(MakeDirs(options.state_dir, 0700));
  ASSIGN_OR_RETURN(std::unique_ptr<AddressPool> pool,
                   AddressPool::Open(absl::StrCat(options.state_dir, "/", kPoolFile), pool_cidr,
                                     options.subnet_prefix_len));
  UniqueFd host_netns(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!host_netns) return ErrnoError("open /proc/thread-self/ns/net");
  std::unique_ptr<NetworkManager> m(
      new NetworkManager(std::move(options), std::move(pool), std::move(host_netns), guest_ip, gateway_ip));
  RETURN_IF_ERROR(m->InstallHostRules());
  return m;
}

std::string NetworkManager::NetnsName(const std::string& vm_id) const {
  return absl::StrCat(options_.name_prefix, "-", vm_id);
}

std::string NetworkManager::HostVethName(uint32_t slot) const {
  return absl::StrCat(options_.name_prefix, "-h", slot);
}

std::string NetworkManager::VmTableName(const std::string& vm_id) const {
  return absl::StrCat(options_.name_prefix, "-", vm_id);
}

absl::Status NetworkManager::InstallHostRules() {
  const std::string& t = options_.name_prefix;
  const std::string veths = absl::StrCat("\"", t, "-h*\"");
  // Replaced as a whole in one transaction, so a changed uplink takes effect.
  std::string rules = absl::StrCat(
      "add table ip ", t, "\ndelete table ip ", t, "\nadd table ip ", t, "\n", "add chain ip ", t,
      " forward { type filter hook forward priority filter; policy accept; }\n",
      // VM namespaces reach each other only through published ports.
      "add rule ip ", t, " forward iifname ", veths, " oifname ", veths, " ct status dnat accept\n",
      "add rule ip ", t, " forward iifname ", veths, " oifname ", veths, " drop\n");
  if (!options_.uplink.empty()) {
    absl::StrAppend(&rules, "add chain ip ", t,
                    " postrouting { type nat hook postrouting priority srcnat; policy accept; }\n",
                    "add rule ip ", t, " postrouting ip saddr ", pool_->pool().ToString(), " oifname \"",
                    options_.uplink, "\" masquerade\n");
  }
  return RunInNetns(host_netns_.get(), [&]() -> absl::Status {
    if (options_.enable_host_forwarding) {
      RETURN_IF_ERROR(Annotate(WriteSysctl("net/ipv4/ip_forward", "1"), "enable host forwarding"));
    }
    return RunNft(rules, absl::StrCat("install host table ip ", t)).status();
  });
}

absl::Status NetworkManager::RemoveHostRules() {
  return RunInNetns(host_netns_.get(), [&] { return DeleteNftTable("ip", options_.name_prefix); });
}

std::string NetworkManager::NsRules(const Allocation& a) const {
  const std::string& t = options_.name_prefix;
  const std::string veth = absl::StrCat("\"", options_.ns_veth_name, "\"");
  return absl::StrCat("add table ip ", t, "\n", "add chain ip ", t,
                      " prerouting { type nat hook prerouting priority dstnat; policy accept; }\n",
                      "add chain ip ", t,
                      " postrouting { type nat hook postrouting priority srcnat; policy accept; }\n",
                      // Ingress: the VM's unique address is the guest.
                      "add rule ip ", t, " prerouting iifname ", veth, " ip daddr ", a.vm_ip.ToString(),
                      " dnat to ", guest_ip_.ToString(), "\n",
                      // Egress: the guest's fixed address leaves as the VM's unique address.
                      "add rule ip ", t, " postrouting oifname ", veth, " ip saddr ", guest_ip_.ToString(),
                      " snat to ", a.vm_ip.ToString(), "\n");
}

std::string NetworkManager::HostVmRules(const std::string& vm_id, const Allocation& a) const {
  const std::string t = VmTableName(vm_id);
  std::string rules =
      absl::StrCat("add table ip ", t, "\n", "add chain ip ", t,
                   " prerouting { type nat hook prerouting priority dstnat; policy accept; }\n",
                   "add chain ip ", t, " output { type nat hook output priority -100; policy accept; }\n");
  for (const PublishedPort& p : a.published) {
    std::string match = absl::StrCat("fib daddr type local ", ProtocolName(p.protocol), " dport ",
                                     p.host_port, " dnat to ", a.vm_ip.ToString(), ":", p.guest_port, "\n");
    absl::StrAppend(&rules, "add rule ip ", t, " prerouting ", match);
    // Loopback sources cannot be routed to the VM (route_localnet is off), so
    // host-local clients use any non-loopback local address.
    absl::StrAppend(&rules, "add rule ip ", t, " output ip daddr != 127.0.0.0/8 ", match);
  }
  return rules;
}

absl::Status NetworkManager::Acquire(const std::string& vm_id) {
  RETURN_IF_ERROR(ValidateName("vm id", vm_id));
  absl::MutexLock lock(&mu_);
  if (!busy_.insert(vm_id).second) {
    return absl::FailedPreconditionError(
        absl::StrCat("another network operation on vm ", vm_id, " is in progress"));
  }
  return absl::OkStatus();
}

void NetworkManager::Release(const std::string& vm_id) {
  absl::MutexLock lock(&mu_);
  busy_.erase(vm_id);
}

VmNetwork NetworkManager::Describe(const std::string& vm_id, const Allocation& a) const {
  VmNetwork n;
  n.vm_id = vm_id;
  n.netns_name = NetnsName(vm_id);
  n.netns_path = NetnsPath(n.netns_name);
  n.tap_name = options_.tap_name;
  n.guest_ip = guest_ip_;
  n.guest_prefix_len = options_.guest_prefix_len;
  n.gateway_ip = gateway_ip_;
  n.subnet = a.subnet;
  n.vm_ip = a.vm_ip;
  n.host_ip = a.host_ip;
  n.host_veth = HostVethName(a.slot);
  n.ns_veth = options_.ns_veth_name;
  n.published = a.published;
  return n;
}

absl::StatusOr<VmNetwork> NetworkManager::Setup(const std::string& vm_id,
                                                const std::vector<PublishedPort>& published,
                                                std::optional<uid_t> tap_owner) {
  RETURN_IF_ERROR(Acquire(vm_id));
  absl::Cleanup release = [&] { Release(vm_id); };
  absl::StatusOr<VmNetwork> n = SetupLocked(vm_id, published, tap_owner.value_or(options_.tap_owner_uid));
  if (!n.ok()) return Annotate(n.status(), absl::StrCat("set up network of vm ", vm_id));
  return n;
}

absl::StatusOr<VmNetwork> NetworkManager::SetupLocked(const std::string& vm_id,
                                                      const std::vector<PublishedPort>& published,
                                                      uid_t tap_owner) {
  const std::string netns_name = NetnsName(vm_id);
  struct stat st;
  if (lstat(NetnsPath(netns_name).c_str(), &st) == 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("network namespace ", netns_name, " exists (Open or Teardown it first)"));
  }
  ASSIGN_OR_RETURN(Allocation a, pool_->Allocate(vm_id, published));
  absl::Cleanup undo = [&] {
    if (absl::Status st = TeardownLocked(vm_id); !st.ok()) {
      spdlog::warn("undoing half-made network of vm {}: {}", vm_id, st.ToString());
    }
  };
  VmNetwork n = Describe(vm_id, a);
  const int host_netns = host_netns_.get();
  const std::string ns_rules = NsRules(a);
  ASSIGN_OR_RETURN(n.netns, CreateNamedNetns(netns_name, [&]() -> absl::Status {
                     ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
                     RETURN_IF_ERROR(nl.SetLinkUp("lo"));
                     RETURN_IF_ERROR(CreateTap(n.tap_name, tap_owner));
                     RETURN_IF_ERROR(nl.AddAddress(n.tap_name, n.gateway_ip, n.guest_prefix_len));
                     RETURN_IF_ERROR(nl.SetLinkUp(n.tap_name));
                     // The host end is created straight in the host namespace.
                     RETURN_IF_ERROR(nl.CreateVeth(n.ns_veth, n.host_veth, host_netns));
                     absl::Status st = [&]() -> absl::Status {
                       RETURN_IF_ERROR(nl.AddAddress(n.ns_veth, n.vm_ip, n.subnet.prefix_len));
                       RETURN_IF_ERROR(nl.SetLinkUp(n.ns_veth));
                       RETURN_IF_ERROR(nl.AddDefaultRoute(n.host_ip, n.ns_veth));
                       RETURN_IF_ERROR(Annotate(WriteSysctl("net/ipv4/ip_forward", "1"),
                                                "enable forwarding in the namespace"));
                       return RunNft(ns_rules, "install namespace nat rules").status();
                     }();
                     // The host end carries no alias yet, so Teardown would not recognise it
                     // as this VM's: remove the pair here (synchronously, both ends).
                     if (!st.ok()) (void)nl.DeleteLink(n.ns_veth);
                     return st;
                   }));
  const std::string host_rules = a.published.empty() ? "" : HostVmRules(vm_id, a);
  RETURN_IF_ERROR(RunInNetns(host_netns, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
    RETURN_IF_ERROR(nl.SetLinkAlias(n.host_veth, vm_id));
    RETURN_IF_ERROR(nl.AddAddress(n.host_veth, n.host_ip, n.subnet.prefix_len));
    RETURN_IF_ERROR(nl.SetLinkUp(n.host_veth));
    if (!host_rules.empty()) {
      RETURN_IF_ERROR(RunNft(host_rules, "install published ports").status());
    }
    return absl::OkStatus();
  }));
  std::move(undo).Cancel();
  return n;
}

absl::StatusOr<VmNetwork> NetworkManager::Open(const std::string& vm_id) {
  RETURN_IF_ERROR(Acquire(vm_id));
  absl::Cleanup release = [&] { Release(vm_id); };
  ASSIGN_OR_RETURN(Allocation a, pool_->Lookup(vm_id));
  VmNetwork n = Describe(vm_id, a);
  ASSIGN_OR_RETURN(n.netns, OpenNamedNetns(n.netns_name));
  return n;
}

absl::Status NetworkManager::Teardown(const std::string& vm_id) {
  RETURN_IF_ERROR(Acquire(vm_id));
  absl::Cleanup release = [&] { Release(vm_id); };
  return Annotate(TeardownLocked(vm_id), absl::StrCat("tear down network of vm ", vm_id));
}

absl::Status NetworkManager::TeardownLocked(const std::string& vm_id) {
  absl::Status first;
  absl::StatusOr<Allocation> a = pool_->Lookup(vm_id);
  Merge(first, RunInNetns(host_netns_.get(), [&]() -> absl::Status {
          // Only VMs with published ports have a host table (a VM the pool does
          // not know may have one: look anyway).
          absl::Status st;
          if (!a.ok() || !a->published.empty()) Merge(st, DeleteNftTable("ip", VmTableName(vm_id)));
          // Deleting one end of the veth deletes both, synchronously (dropping the
          // namespace would do it too, but the kernel cleans namespaces up later).
          // Only a device whose alias names this VM is ours: a failed Setup may
          // have met someone else's device of the same name.
          if (a.ok()) {
            absl::StatusOr<Netlink> nl = Netlink::Open();
            if (!nl.ok()) {
              Merge(st, nl.status());
            } else {
              const std::string veth = HostVethName(a->slot);
              absl::StatusOr<LinkInfo> link = nl->GetLink(veth);
              if (link.ok() && link->alias == vm_id) {
                Merge(st, IgnoreNotFound(nl->DeleteLink(veth)));
              } else if (!link.ok()) {
                Merge(st, IgnoreNotFound(link.status()));
              }
            }
          }
          return st;
        }));
  // The tap and everything else inside go with the namespace once the last
  // holder (Firecracker, a VmNetwork's fd) lets go.
  Merge(first, DeleteNamedNetns(NetnsName(vm_id)));
  if (first.ok()) Merge(first, pool_->Release(vm_id));
  return first;
}

absl::StatusOr<std::vector<std::string>> NetworkManager::ReconcileOrphans(
    const absl::flat_hash_set<std::string>& live) {
  const std::string prefix = absl::StrCat(options_.name_prefix, "-");
  std::set<std::string> orphans;
  ASSIGN_OR_RETURN(std::vector<std::string> namespaces, ListNamedNetns());
  for (const std::string& ns : namespaces) {
    if (absl::StartsWith(ns, prefix)) {
      std::string vm_id = ns.substr(prefix.size());
      if (!live.contains(vm_id) && ValidateName("vm id", vm_id).ok()) orphans.insert(vm_id);
    }
  }
  for (const auto& [vm_id, a] : pool_->All()) {
    if (!live.contains(vm_id)) orphans.insert(vm_id);
  }
  std::vector<std::string> tables;
  RETURN_IF_ERROR(RunInNetns(host_netns_.get(), [&]() -> absl::Status {
    ASSIGN_OR_RETURN(tables, ListNftTables("ip"));
    return absl::OkStatus();
  }));
  for (const std::string& t : tables) {
    if (absl::StartsWith(t, prefix)) {
      std::string vm_id = t.substr(prefix.size());
      if (!live.contains(vm_id) && ValidateName("vm id", vm_id).ok()) orphans.insert(vm_id);
    }
  }
  absl::Status first;
  std::vector<std::string> removed;
  for (const std::string& vm_id : orphans) {
    absl::Status st = Teardown(vm_id);
    if (st.ok()) {
      removed.push_back(vm_id);
    } else {
      Merge(first, st);
    }
  }
  // Host veths whose slot no live VM holds (the pool entry was lost).
  std::set<uint32_t> held;
  for (const auto& [vm_id, a] : pool_->All()) held.insert(a.slot);
  const std::string veth_prefix = absl::StrCat(options_.name_prefix, "-h");
  Merge(first, RunInNetns(host_netns_.get(), [&]() -> absl::Status {
          ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
          ASSIGN_OR_RETURN(std::vector<LinkInfo> links, nl.ListLinks());
          absl::Status st;
          for (const LinkInfo& l : links) {
            uint32_t slot = 0;
            if (!absl::StartsWith(l.name, veth_prefix) ||
                !absl::SimpleAtoi(l.name.substr(veth_prefix.size()), &slot) || held.count(slot)) {
              continue;
            }
            spdlog::info("removing orphaned host veth {} (alias \"{}\")", l.name, l.alias);
            Merge(st, IgnoreNotFound(nl.DeleteLink(l.name)));
            if (!l.alias.empty() && std::find(removed.begin(), removed.end(), l.alias) == removed.end()) {
              removed.push_back(l.alias);
            }
          }
          return st;
        }));
  if (!first.ok()) return Annotate(first, "reconcile networks");
  return removed;
}

}  // namespace fcvm::net
