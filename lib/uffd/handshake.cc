#include "lib/uffd/handshake.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "nlohmann/json.hpp"

namespace fcvm::uffd {
namespace {

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("bad handshake: ", what));
}

absl::StatusOr<uint64_t> GetU64(const nlohmann::json& obj, const char* name, size_t index) {
  auto it = obj.find(name);
  if (it == obj.end()) return Bad(absl::StrCat("region ", index, ": missing field \"", name, "\""));
  if (!it->is_number_unsigned()) {
    return Bad(
        absl::StrCat("region ", index, ": field \"", name, "\" is not an unsigned integer: ", it->dump()));
  }
  return it->get<uint64_t>();
}

}  // namespace

absl::StatusOr<Handshake> ParseHandshake(const HandshakeMessage& message, uint64_t mem_file_size) {
  if (message.control_truncated) {
    return Bad("control data truncated (MSG_CTRUNC): more than one fd was sent");
  }
  if (message.num_fds == 0) return Bad("no file descriptor (expected the userfaultfd)");
  if (message.num_fds != 1) {
    return Bad(absl::StrCat(message.num_fds, " file descriptors (expected exactly one userfaultfd)"));
  }
  if (message.filled_buffer || message.data.size() >= kHandshakeBufferSize) {
    return Bad(
        absl::StrCat("message fills the ", kHandshakeBufferSize / 1024, " KiB receive buffer (too large)"));
  }
  if (message.data.empty()) return Bad("empty message");
  // The message is one JSON array and nothing else but JSON whitespace around
  // it (what serde_json::from_str, in Firecracker's reference handler,
  // accepts). nlohmann's parser would stop at a NUL byte as if the input
  // ended there and skip a leading UTF-8 byte-order mark: refuse both first.
  if (message.data.substr(0, 3) == "\xEF\xBB\xBF") return Bad("starts with a UTF-8 byte-order mark");
  if (size_t nul = message.data.find('\0'); nul != absl::string_view::npos) {
    const bool after = nlohmann::json::accept(message.data.begin(), message.data.begin() + nul);
    return Bad(absl::StrCat("NUL byte at offset ", nul, after ? " after the JSON array" : "",
                            " (only JSON whitespace may surround the array)"));
  }
  nlohmann::json doc = nlohmann::json::parse(message.data.begin(), message.data.end(), nullptr,
                                             /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Bad(absl::StrCat("not valid JSON (or incomplete, or followed by other bytes); ",
                            message.data.size(), " bytes received"));
  }
  if (!doc.is_array()) return Bad(absl::StrCat("expected a JSON array, got ", doc.type_name()));
  if (doc.empty()) return Bad("empty region array");

  Handshake out;
  for (size_t i = 0; i < doc.size(); ++i) {
    const nlohmann::json& r = doc[i];
    if (!r.is_object()) return Bad(absl::StrCat("region ", i, " is a ", r.type_name(), ", not an object"));
    GuestRegion region;
    ASSIGN_OR_RETURN(region.base_host_virt_addr, GetU64(r, "base_host_virt_addr", i));
    ASSIGN_OR_RETURN(region.size, GetU64(r, "size", i));
    ASSIGN_OR_RETURN(region.offset, GetU64(r, "offset", i));
    if (r.contains("page_size")) {
      ASSIGN_OR_RETURN(region.page_size, GetU64(r, "page_size", i));
    } else if (r.contains("page_size_kib")) {
      // Despite the name, Firecracker puts bytes here.
      ASSIGN_OR_RETURN(region.page_size, GetU64(r, "page_size_kib", i));
    } else {
      return Bad(absl::StrCat("region ", i, ": missing field \"page_size\" (and \"page_size_kib\")"));
    }
    const uint64_t ps = region.page_size;
    if (ps < 4096 || (ps & (ps - 1)) != 0) {
      return Bad(absl::StrCat("region ", i, ": page size ", ps, " is not a power of two >= 4096"));
    }
    if (i > 0 && ps != out.page_size) {
      return Bad(absl::StrCat("region ", i, ": page size ", ps, " differs from region 0's ", out.page_size));
    }
    out.page_size = ps;
    if (region.size == 0) return Bad(absl::StrCat("region ", i, ": size is 0"));
    if (region.size % ps != 0) {
      return Bad(
          absl::StrCat("region ", i, ": size ", region.size, " is not a multiple of the page size ", ps));
    }
    if (region.offset % ps != 0) {
      return Bad(
          absl::StrCat("region ", i, ": offset ", region.offset, " is not a multiple of the page size ", ps));
    }
    if (region.base_host_virt_addr % ps != 0) {
      return Bad(absl::StrCat("region ", i, ": base_host_virt_addr ", region.base_host_virt_addr,
                              " is not page-aligned"));
    }
    if (region.base_host_virt_addr > std::numeric_limits<uint64_t>::max() - region.size) {
      return Bad(absl::StrCat("region ", i, ": address range overflows"));
    }
    if (region.offset > mem_file_size || region.size > mem_file_size - region.offset) {
      return Bad(absl::StrCat("region ", i, ": [", region.offset, ", +", region.size,
                              ") extends past the end of the memory file (", mem_file_size, " bytes)"));
    }
    out.regions.push_back(region);
  }
  // Overlaps, in the file and in the peer's address space.
  std::vector<size_t> order(out.regions.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto check = [&](auto key, const char* where) -> absl::Status {
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return key(out.regions[a]) < key(out.regions[b]); });
    for (size_t k = 1; k < order.size(); ++k) {
      const GuestRegion& prev = out.regions[order[k - 1]];
      const GuestRegion& cur = out.regions[order[k]];
      if (key(prev) + prev.size > key(cur)) {
        return Bad(absl::StrCat("regions ", order[k - 1], " and ", order[k], " overlap in ", where));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check([](const GuestRegion& r) { return r.offset; }, "the memory file"));
  RETURN_IF_ERROR(check([](const GuestRegion& r) { return r.base_host_virt_addr; }, "the address space"));
  std::sort(out.regions.begin(), out.regions.end(), [](const GuestRegion& a, const GuestRegion& b) {
    return a.base_host_virt_addr < b.base_host_virt_addr;
  });
  return out;
}

AddressRange WholePagesIn(uint64_t start, uint64_t end, uint64_t page_size) {
  const uint64_t mask = page_size - 1;
  AddressRange r;
  r.begin = start > std::numeric_limits<uint64_t>::max() - mask ? std::numeric_limits<uint64_t>::max()
                                                                : (start + mask) & ~mask;
  r.end = end & ~mask;
  return r;
}

absl::Status CheckIsUserfaultfd(int fd) {
  std::string link = absl::StrCat("/proc/self/fd/", fd);
  char target[256];
  ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n < 0) return Annotate(ErrnoError(absl::StrCat("readlink ", link)), "bad handshake");
  absl::string_view what(target, static_cast<size_t>(n));
  if (what != "anon_inode:[userfaultfd]") {
    return Bad(absl::StrCat("the fd is not a userfaultfd (it is ", what, ")"));
  }
  return absl::OkStatus();
}

}  // namespace fcvm::uffd
