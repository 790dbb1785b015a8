#pragma once

// What a snapshot needs of the host that restores it.
//
// A Firecracker snapshot is only good where the restoring Firecracker can
// read its vmstate and the CPU gives the guest what it saw when it ran:
//
//  - Snapshot data format. The vmstate file starts with a header: a u64 magic
//    (0x0710198486640000 on x86_64), then the format version as a bincode
//    string (u64 little-endian length, then "8.0.0"). Firecracker loads a
//    vmstate whose format has its own major and a minor no greater than its
//    own (src/vmm/src/snapshot/mod.rs, SnapshotHdr::load); `firecracker
//    --snapshot-version` prints the format it writes (1.14.2: 8.0.0).
//  - Firecracker version. The format changes with almost every minor
//    release, and fcvm vouches for a snapshot only under the major.minor that
//    made it (patch releases do not change the format).
//  - CPU. Without a CPU template (fcvm sets none) the guest sees the host's
//    own CPUID, so a snapshot restores on the same vendor, family and model,
//    and only where every feature the guest may have used is present: the
//    flags of CpuTemplateFlags(), the instruction-set and mitigation features
//    that Firecracker's CPU templates (T2, T2S, C3, T2CL, T2A) mask or pass.
//    A host with more features is fine; one with fewer is not. Stepping and
//    model name are recorded but not compared (microcode revisions differ
//    within one model).
//  - Page size. The memory file is laid out in the host's base pages.
//  - Host kernel. Recorded and shown, not compared: KVM's snapshot ABI is
//    stable across kernels, and refusing every kernel update would make
//    snapshots useless on a patched fleet.
//
// Everything here is pure or reads /proc, uname and files; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/firecracker/version.h"

namespace fcvm::firecracker {

struct CpuIdentity {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD"
  int family = 0;
  int model = 0;
  int stepping = 0;
  std::string model_name;
  // The flags of CpuTemplateFlags() this CPU has, sorted.
  std::vector<std::string> flags;
};

// What a snapshot records about where it was made, and what a host offers.
// Empty strings and zeros mean "not known" and are not compared.
struct SnapshotHost {
  std::string firecracker_version;  // "1.14.2"
  std::string snapshot_format;      // "8.0.0"
  CpuIdentity cpu;
  std::string cpu_template;    // "" = none: the host's CPU as it is
  std::string kernel_release;  // uname -r
  uint64_t page_size = 0;      // bytes
};

// The CPU feature flags, as /proc/cpuinfo names them, that a snapshot needs
// on the restoring host (see above), sorted.
const std::vector<std::string>& CpuTemplateFlags();

// The first processor of a /proc/cpuinfo text. InvalidArgument when it has
// no vendor_id.
absl::StatusOr<CpuIdentity> ParseCpuInfo(absl::string_view cpuinfo);

// This host: CPU (/proc/cpuinfo), kernel release (uname), page size. The
// Firecracker fields are left empty (the caller knows its binary). Errors:
// /proc/cpuinfo unreadable or without a vendor.
absl::StatusOr<SnapshotHost> ProbeHost();

// The format version in the first bytes of a vmstate file. InvalidArgument
// when the magic is not x86_64 Firecracker's or the header is malformed.
absl::StatusOr<Version> ParseVmstateFormat(absl::string_view head);
// Reads the header of `path` (open/read errors as ErrnoError).
absl::StatusOr<Version> ReadVmstateFormat(const std::string& path);

// True when Firecracker writing format `firecracker` loads a vmstate of
// format `snapshot`: same major, snapshot minor <= firecracker minor.
bool FormatLoadable(const Version& snapshot, const Version& firecracker);

// JSON object (what meta.json embeds as "host"), and back. FromJson:
// InvalidArgument for malformed JSON; missing fields stay unknown.
std::string SnapshotHostToJson(const SnapshotHost& host);
absl::StatusOr<SnapshotHost> SnapshotHostFromJson(absl::string_view json);

// OK when a snapshot made on `made` can be restored on `here`; otherwise
// FailedPrecondition listing every difference that matters, each naming both
// sides ("CPU vendor: snapshot AuthenticAMD, this host GenuineIntel").
// Fields unknown on either side are not compared.
absl::Status CheckSnapshotHost(const SnapshotHost& made, const SnapshotHost& here);

}  // namespace fcvm::firecracker
