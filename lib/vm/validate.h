#pragma once

// Checks of what callers send, with the bounds that keep every request and
// every answer of fcvmd small enough to travel (a listing of many VMs, a
// clone of 1,024): each error is InvalidArgument and states the bound.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

// Labels: at most kMaxLabels per object; keys 1-63 bytes of [A-Za-z0-9._/-]
// starting and ending with a letter or digit; values at most 256 bytes of
// printable ASCII or UTF-8 without control characters; all keys and values
// together at most kMaxLabelBytes.
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelKeyBytes = 63;
inline constexpr size_t kMaxLabelValueBytes = 256;
inline constexpr size_t kMaxLabelBytes = 16 * 1024;
// Firecracker's x86_64 kernel command line limit.
inline constexpr size_t kMaxBootArgsBytes = 2048;
inline constexpr uint32_t kMinMemoryMib = 16;
inline constexpr uint32_t kMaxMemoryMib = 1024 * 1024;  // 1 TiB
inline constexpr uint32_t kMaxVcpus = 32;
inline constexpr size_t kMaxDrives = 16;
inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr size_t kMaxPublishedPorts = 64;
inline constexpr uint32_t kMaxCloneCount = 1024;
// Names of clones are "<prefix>-<n>": the prefix leaves room for the index
// within a 64-byte name.
inline constexpr size_t kMaxClonePrefixBytes = 58;

// Metadata (MMDS): a JSON object without the key kMetadataNamespace (fcvm's
// keys go there), at most kMaxMetadataBytes with fcvm's keys (Firecracker's
// default --mmds-size-limit).
inline constexpr char kMetadataNamespace[] = "fcvm";
inline constexpr size_t kMaxMetadataBytes = 51200;
// vsock: guest CIDs 0-2 are reserved (hypervisor, local, host); each VM has
// its own Firecracker device, so every VM may use the same CID.
inline constexpr uint32_t kDefaultGuestCid = 3;
// The host-side socket, relative to Firecracker's working directory.
inline constexpr char kVsockSocketName[] = "vsock.sock";

// `what` names the object in messages ("vm labels").
absl::Status ValidateLabels(absl::string_view what, const Labels& labels);

// A label selector: the same rules as labels.
absl::Status ValidateSelector(const Labels& selector);

// Ports 1-65535, protocol tcp/udp, no host port twice, at most
// kMaxPublishedPorts.
absl::Status ValidatePublish(const std::vector<PortMapping>& publish);

// A config for RunVm: kernel/initrd/drives exist and are regular readable
// files (InvalidArgument naming the file, never quoting its contents), sizes
// in range, drive ids valid and unique, at most one root device, published
// ports only with the network enabled.
absl::Status ValidateConfig(const VmConfig& config);

// A clone's memory backend against its snapshot's page size: a snapshot of
// huge-page guest memory (page_size > 4 KiB) is InvalidArgument for the File
// backend, naming the snapshot: Firecracker restores hugetlbfs memory only
// through a page server (and exits on such a load). InvalidArgument rather
// than FailedPrecondition because no change of state makes the request
// valid: a snapshot's page size never changes, only a different request
// (the UFFD backend) works.
absl::Status ValidateCloneBackend(absl::string_view snapshot_name, uint64_t page_size, MemoryBackend backend);

// The request's own fields (count, name prefix, labels, ports, backend and
// policy); the snapshot-dependent rules are the clone's.
absl::Status ValidateCloneRequest(const CloneRequest& request);

// Caller's metadata: empty, or a JSON object within the rules above
// (metadata.cc).
absl::Status ValidateMetadata(absl::string_view user_json);

}  // namespace fcvm::vm
