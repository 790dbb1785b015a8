#include "lib/net/address_pool.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "nlohmann/json.hpp"

namespace fcvm::net {

std::string Ipv4::ToString() const {
  return absl::StrCat(value >> 24, ".", (value >> 16) & 0xff, ".", (value >> 8) & 0xff, ".", value & 0xff);
}

absl::StatusOr<Ipv4> ParseIpv4(absl::string_view text) {
  in_addr addr;
  std::string s(text);
  if (inet_pton(AF_INET, s.c_str(), &addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address: \"", text, "\""));
  }
  return Ipv4{ntohl(addr.s_addr)};
}

std::string Cidr::ToString() const { return absl::StrCat(network.ToString(), "/", prefix_len); }

absl::StatusOr<Cidr> ParseCidr(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  int len = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &len) || len < 0 || len > 32) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 CIDR: \"", text, "\""));
  }
  ASSIGN_OR_RETURN(Ipv4 ip, ParseIpv4(parts[0]));
  uint32_t mask = len == 0 ? 0 : ~uint32_t{0} << (32 - len);
  if ((ip.value & ~mask) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("CIDR \"", text, "\" has host bits set (network is ",
                                                   Ipv4{ip.value & mask}.ToString(), "/", len, ")"));
  }
  return Cidr{ip, len};
}

absl::string_view ProtocolName(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }

namespace {

std::string PortKey(const PublishedPort& p) {
  return absl::StrCat(ProtocolName(p.protocol), "/", p.host_port);
}

}  // namespace

AddressPool::AddressPool(std::string path, Cidr pool, int subnet_prefix_len)
    : path_(std::move(path)),
      pool_(pool),
      subnet_prefix_len_(subnet_prefix_len),
      capacity_(uint64_t{1} << (subnet_prefix_len - pool.prefix_len)) {}

absl::StatusOr<std::unique_ptr<AddressPool>> AddressPool::Open(std::string path, Cidr pool,
                                                               int subnet_prefix_len) {
  if (subnet_prefix_len != 30 && subnet_prefix_len != 31) {
    return absl::InvalidArgumentError(
        absl::StrCat("subnet prefix length must be 30 or 31, not ", subnet_prefix_len));
  }
  if (pool.prefix_len > subnet_prefix_len || pool.prefix_len < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("address pool ", pool.ToString(), " cannot be split into /", subnet_prefix_len,
                     " subnets (pool prefix must be /8../", subnet_prefix_len, ")"));
  }
  std::unique_ptr<AddressPool> p(new AddressPool(std::move(path), pool, subnet_prefix_len));
  const std::string lock_path = absl::StrCat(p->path_, ".lock");
  p->lock_.Reset(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!p->lock_) return ErrnoError(absl::StrCat("open ", lock_path));
  if (flock(p->lock_.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("address pool ", p->path_, " is in use by another network manager (", lock_path, ")"));
    }
    return ErrnoError(absl::StrCat("flock ", lock_path));
  }
  RETURN_IF_ERROR(p->Load());
  return p;
}

Allocation AddressPool::MakeAllocation(uint32_t slot) const {
  Allocation a;
  a.slot = slot;
  uint32_t net = pool_.network.value + slot * (uint32_t{1} << (32 - subnet_prefix_len_));
  a.subnet = Cidr{Ipv4{net}, subnet_prefix_len_};
  if (subnet_prefix_len_ == 31) {
    a.host_ip = Ipv4{net};
    a.vm_ip = Ipv4{net + 1};
  } else {
    a.host_ip = Ipv4{net + 1};
    a.vm_ip = Ipv4{net + 2};
  }
  return a;
}

absl::Status AddressPool::Load() {
  absl::StatusOr<std::string> text = ReadFile(path_);
  if (absl::IsNotFound(text.status())) return absl::OkStatus();
  if (!text.ok()) return Annotate(text.status(), "address pool");
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("address pool file ", path_, ": ", why));
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("pool") || !j["pool"].is_string() || !j.contains("subnet_prefix_len") ||
      !j["subnet_prefix_len"].is_number_integer() || !j.contains("allocations") ||
      !j["allocations"].is_object()) {
    return bad("missing pool, subnet_prefix_len or allocations");
  }
  std::string file_pool = j["pool"].get<std::string>();
  int file_len = j["subnet_prefix_len"].get<int>();
  if (file_pool != pool_.ToString() || file_len != subnet_prefix_len_) {
    return absl::FailedPreconditionError(
        absl::StrCat("address pool file ", path_, " was written for ", file_pool, " split into /", file_len,
                     ", but the configured pool is ", pool_.ToString(), " split into /", subnet_prefix_len_,
                     "; tear down every VM network (or move the file away) before renumbering"));
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [vm_id, entry] : j["allocations"].items()) {
    if (!entry.is_object() || !entry.contains("slot") || !entry["slot"].is_number_unsigned()) {
      return bad(absl::StrCat("entry for ", vm_id, " has no slot"));
    }
    uint64_t slot = entry["slot"].get<uint64_t>();
    if (slot >= capacity_) return bad(absl::StrCat("slot ", slot, " of ", vm_id, " out of range"));
    if (by_slot_.count(static_cast<uint32_t>(slot))) {
      return bad(absl::StrCat("slot ", slot, " held twice"));
    }
    Allocation a = MakeAllocation(static_cast<uint32_t>(slot));
    if (entry.contains("published")) {
      for (const auto& p : entry["published"]) {
        PublishedPort port;
        std::string proto = p.value("protocol", "tcp");
        if (proto != "tcp" && proto != "udp") return bad(absl::StrCat("bad protocol ", proto));
        port.protocol = proto == "tcp" ? Protocol::kTcp : Protocol::kUdp;
        port.host_port = p.value("host_port", uint16_t{0});
        port.guest_port = p.value("guest_port", uint16_t{0});
        a.published.push_back(port);
      }
    }
    by_slot_[a.slot] = vm_id;
    by_vm_[vm_id] = std::move(a);
  }
  return absl::OkStatus();
}

absl::Status AddressPool::Persist() const {
  nlohmann::json allocations = nlohmann::json::object();
  for (const auto& [vm_id, a] : by_vm_) {
    nlohmann::json ports = nlohmann::json::array();
    for (const PublishedPort& p : a.published) {
      ports.push_back({{"protocol", std::string(ProtocolName(p.protocol))},
                       {"host_port", p.host_port},
                       {"guest_port", p.guest_port}});
    }
    allocations[vm_id] = {{"slot", a.slot},
                          {"subnet", a.subnet.ToString()},
                          {"vm_ip", a.vm_ip.ToString()},
                          {"published", ports}};
  }
  nlohmann::json j = {
      {"pool", pool_.ToString()}, {"subnet_prefix_len", subnet_prefix_len_}, {"allocations", allocations}};
  return Annotate(WriteFileAtomic(path_, j.dump(2) + "\n", 0600), "persist address pool");
}

absl::StatusOr<Allocation> AddressPool::Allocate(const std::string& vm_id,
                                                 const std::vector<PublishedPort>& published) {
  absl::MutexLock lock(&mu_);
  if (auto it = by_vm_.find(vm_id); it != by_vm_.end()) {
    if (it->second.published == published) return it->second;
    return absl::AlreadyExistsError(absl::StrCat(
        "vm ", vm_id, " already holds ", it->second.subnet.ToString(), " with other published ports"));
  }
  std::map<std::string, std::string> port_owner;
  for (const auto& [other, a] : by_vm_) {
    for (const PublishedPort& p : a.published) port_owner[PortKey(p)] = other;
  }
  std::map<std::string, bool> mine;
  for (const PublishedPort& p : published) {
    if (p.host_port == 0 || p.guest_port == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("published port ", PortKey(p), " -> ", p.guest_port, ": ports must be 1-65535"));
    }
    if (auto it = port_owner.find(PortKey(p)); it != port_owner.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("host port ", PortKey(p), " is already published by vm ", it->second));
    }
    if (!mine.emplace(PortKey(p), true).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("host port ", PortKey(p), " is listed twice for vm ", vm_id));
    }
  }
  // Lowest free slot: the map is ordered, so the first gap is it.
  uint64_t slot = 0;
  for (const auto& [used, owner] : by_slot_) {
    if (used != slot) break;
    ++slot;
  }
  if (slot >= capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "address pool ", pool_.ToString(), " is exhausted: all ", capacity_, " /", subnet_prefix_len_,
        " subnets are in use; tear down VM networks or configure a larger pool"));
  }
  Allocation a = MakeAllocation(static_cast<uint32_t>(slot));
  a.published = published;
  by_slot_[a.slot] = vm_id;
  by_vm_[vm_id] = a;
  if (absl::Status st = Persist(); !st.ok()) {
    by_slot_.erase(a.slot);
    by_vm_.erase(vm_id);
    return st;
  }
  return a;
}

absl::Status AddressPool::Release(const std::string& vm_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_vm_.find(vm_id);
  if (it == by_vm_.end()) return absl::OkStatus();
  Allocation old = it->second;
  by_slot_.erase(old.slot);
  by_vm_.erase(it);
  if (absl::Status st = Persist(); !st.ok()) {
    by_slot_[old.slot] = vm_id;
    by_vm_[vm_id] = std::move(old);
    return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<Allocation> AddressPool::Lookup(const std::string& vm_id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_vm_.find(vm_id);
  if (it == by_vm_.end()) {
    return absl::NotFoundError(absl::StrCat("vm ", vm_id, " holds no address"));
  }
  return it->second;
}

std::map<std::string, Allocation> AddressPool::All() const {
  absl::MutexLock lock(&mu_);
  return by_vm_;
}

}  // namespace fcvm::net
