#pragma once

// Domain types of the VM layer: what a VM and a snapshot are, the requests
// the Manager takes and what it answers. daemon/convert.cc maps them to and
// from the fcvm.v1 protos; nothing here knows about protobuf.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/firecracker/snapshot_compat.h"
#include "lib/uffd/policy.h"
#include "lib/vm/state.h"

namespace fcvm::vm {

using Labels = std::map<std::string, std::string>;

struct DriveConfig {
  std::string drive_id;  // [A-Za-z0-9_-]{1,64}
  std::string path;      // host image; writable drives get a private copy
  bool is_root_device = false;
  bool read_only = false;
};

struct PortMapping {
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
  std::string protocol = "tcp";  // "tcp" or "udp"
};

struct NetworkConfig {
  bool enabled = false;
  std::string guest_mac;
  std::vector<PortMapping> publish;
};

// The network a VM got (see lib/net): its own namespace with the tap, and a
// unique host-reachable address DNAT'd to the guest's fixed one.
struct NetworkStatus {
  std::string netns;
  std::string tap;
  std::string guest_ip;
  std::string host_ip;  // the VM's unique address
  std::string guest_mac;
  std::vector<PortMapping> publish;
};

// A virtio-vsock device. Its host-side socket is kVsockSocketName
// (validate.h), relative to Firecracker's working directory: the VM's own
// directory, or its chroot's root when jailed. A snapshot keeps that
// relative path, so each clone listens in its own (VsockHostPath).
struct VsockConfig {
  bool enabled = false;
  uint32_t guest_cid = 0;  // 0: kDefaultGuestCid
};

// Cgroup limits of a jailed VM (0 = the default, see EffectiveLimits).
struct ResourceLimits {
  uint32_t memory_mib = 0;   // guest memory + Firecracker's own
  uint32_t cpu_percent = 0;  // of one CPU, per period
  uint32_t cpu_weight = 0;   // 1-10000
  uint32_t pids_max = 0;
};

// Page size of a VM's guest memory. k2M: 2 MiB hugetlbfs pages from the
// host's huge page pool ("huge_pages": "2M" in Firecracker's machine-config);
// its snapshots can be cloned only through the page server (UFFD).
enum class HugePages { kNone, k2M };
const char* HugePagesName(HugePages huge_pages);  // "none", "2M"
bool ParseHugePages(absl::string_view name, HugePages* out);
// Bytes: 4096 or 2 MiB.
uint64_t GuestPageSize(HugePages huge_pages);

struct VmConfig {
  std::string kernel_path;
  std::string initrd_path;
  std::string boot_args;
  uint32_t vcpu_count = 1;
  uint32_t memory_mib = 128;
  std::vector<DriveConfig> drives;
  NetworkConfig network;
  // MMDS version the guest speaks: "V2" (session tokens; empty means V2) or
  // "V1". MMDS is reachable through the VM's network interface only.
  std::string mmds_version;
  VsockConfig vsock;
  ResourceLimits limits;
  HugePages huge_pages = HugePages::kNone;
};

// How a jailed VM is confined.
struct JailStatus {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string chroot;
  ResourceLimits limits;       // in force
  std::string cgroup_version;  // "v1" or "v2"
};

enum class MemoryBackend { kUffd, kFile };
const char* MemoryBackendName(MemoryBackend backend);  // "uffd", "file"

// The prefetch policy of a clone is the page server's own (lib/uffd/policy.h).
using uffd::ClonePolicy;

struct VmTimings {
  absl::Duration total;
  absl::Duration process_ready;
  absl::Duration disks;
  absl::Duration load;
  absl::Duration prefetch;
  absl::Duration network;
  bool from_warm_pool = false;
};

// A VM as the API reports it (a copy, consistent at the time it was taken).
struct VmInfo {
  std::string id;
  std::string name;
  Labels labels;
  VmState state = VmState::kCreating;
  VmConfig config;
  std::string snapshot_id;  // set for clones
  // The snapshot whose memory equals this VM's as of its dirty-page log's
  // last reset (its last snapshot, fork or restore): a live fork writes only
  // the pages written since, as a layer on it. Empty: none known (a booted
  // VM, or a snapshot or fork that failed after the log was reset), and the
  // next fork writes the whole memory.
  std::string memory_base;
  // PAUSED by a snapshot or fork of fcvmd's, not by its user: a restarted
  // fcvmd resumes a VM so marked (the one that paused it is gone).
  bool paused_for_snapshot = false;
  MemoryBackend memory_backend = MemoryBackend::kUffd;
  // For clones: what was asked, and what the page server made of it (kAuto
  // resolved to record, prefetch or none; kNone for the File backend).
  ClonePolicy prefetch_policy = ClonePolicy::kAuto;
  ClonePolicy resolved_policy = ClonePolicy::kNone;
  int32_t pid = 0;
  std::string console_log_path;
  absl::Time created_at;
  VmTimings timings;
  // Why the VM is stopped or failed; empty while it is healthy.
  std::string error;
  NetworkStatus network;  // empty without a network
  // The host side of its vsock (Firecracker's host-initiated CONNECT
  // protocol), empty without one.
  std::string vsock_path;
  bool jailed = false;
  JailStatus jail;  // when jailed
};

// What a VM's Firecracker uses, sampled at `sampled_at` (Manager::Usage).
struct VmUsage {
  absl::Time sampled_at;
  // User + system CPU time of the process, all its threads (vCPUs, VMM, I/O),
  // since it started (a warm-pool process: since it was pooled).
  absl::Duration cpu_time;
  uint64_t rss_bytes = 0;
  // Proportional set size (shared pages divided among their users); only
  // when asked for: reading it walks the process's page tables.
  std::optional<uint64_t> pss_bytes;
  // Guest page faults the page server resolved for it (UFFD clones; 0 for
  // others).
  uint64_t page_faults_served = 0;
  // Since it first reached running or paused.
  absl::Duration uptime;
};

enum class AfterSnapshot { kResume, kStayPaused, kStop };

struct SnapshotInfo {
  std::string id;
  std::string name;
  Labels labels;
  std::string source_vm_id;
  VmConfig config;
  std::string firecracker_version;
  uint64_t memory_bytes = 0;
  // Page size of the guest memory in bytes: 4096, or 2 MiB for a snapshot of
  // a huge-page VM (clones of it need the UFFD backend).
  uint64_t memory_page_size = 4096;
  uint64_t vmstate_bytes = 0;
  uint64_t zero_pages = 0;
  uint64_t working_set_pages = 0;
  std::string vmstate_sha256;
  std::string memory_sha256;
  absl::Time created_at;
  uint32_t clone_count = 0;
  std::string path;
  absl::Duration create_duration;
  // Where it was made (Firecracker, snapshot format, CPU, kernel, page size);
  // host_recorded is false for snapshots made before fcvm recorded it.
  firecracker::SnapshotHost host;
  bool host_recorded = false;
  bool jailed = false;  // made by a jailed VM: only a jailing fcvmd can clone it
  // Layered memory (a live fork's): the snapshot under this one, the number
  // of memory files a restore reads (1: whole) and the bytes this snapshot's
  // own memory file holds.
  std::string parent_id;
  uint32_t memory_layers = 1;
  uint64_t memory_allocated_bytes = 0;
};

enum class EventKind { kVmState, kSnapshotCreated, kSnapshotDeleted, kPageServerDrop, kReconcile };

struct Event {
  // 1, 2, 3... in the order fcvmd published them; never reused while fcvmd
  // runs (a restarted fcvmd starts again at 1).
  uint64_t sequence = 0;
  EventKind kind = EventKind::kVmState;
  absl::Time time;
  std::string vm_id;
  std::string snapshot_id;
  VmState state = VmState::kCreating;
  VmState previous_state = VmState::kCreating;
  std::string message;
};

// ---- requests and results of the Manager ----

struct RunRequest {
  std::string name;  // empty: the VM id
  Labels labels;
  VmConfig config;
  // The VM's metadata (MMDS): a JSON object, empty = {}; fcvm adds its own
  // keys under "fcvm" (metadata.cc).
  std::string metadata_json;
};

struct ListFilter {
  Labels label_selector;
  std::vector<VmState> states;  // empty = all
  std::string snapshot_ref;     // empty = all
};

struct DeleteResult {
  std::string id;
  bool forced = false;  // SIGKILL was needed
};

struct SnapshotRequest {
  std::string vm_ref;
  std::string name;  // empty: the snapshot id
  Labels labels;
  AfterSnapshot after = AfterSnapshot::kResume;
};

struct CloneRequest {
  std::string snapshot_ref;
  uint32_t count = 1;  // 1-kMaxCloneCount
  MemoryBackend backend = MemoryBackend::kUffd;
  ClonePolicy policy = ClonePolicy::kAuto;
  std::string name_prefix;  // default: the snapshot's name
  Labels labels;
  bool stay_paused = false;
  bool all_or_nothing = false;
  uint32_t parallelism = 0;  // 0 = the manager's default
  // Whether the clones have a network, when the caller says: it must match
  // the snapshot's (a snapshot bakes in its network devices), or the request
  // is refused; unset takes the snapshot's.
  std::optional<bool> network_enabled;
  // Host ports published by each clone; only sensible with count 1 (a host
  // port can be published once). Clones of a snapshot with a network always
  // get their own namespace and tap; one without cannot gain a network.
  std::vector<PortMapping> publish;
  // Every clone's metadata (MMDS): a JSON object, empty = {}; each clone
  // also gets its own keys under "fcvm", before its vCPUs run.
  std::string metadata_json;
  // Cgroup limits of each clone (jailed VMs); unset: the snapshot's VM's.
  std::optional<ResourceLimits> limits;
  // Called as each clone finishes (succeeded or failed), from the worker that
  // restored it; for progress reports. May be empty.
  std::function<void(const VmInfo&)> on_clone_done;
};

struct CloneResult {
  std::vector<VmInfo> clones;  // in index order; failed ones have state kFailed + error
  absl::Duration total;
  uint32_t succeeded = 0;
  uint32_t failed = 0;
};

// A live fork: N clones of a running (or paused) VM as it is now. The
// source is paused only while the pages written since its memory base are
// written (a Diff snapshot), which becomes a memory layer over that base; the
// forks restore from the layers through the page server. `clone` says how
// the forks are made (its snapshot_ref is ignored; the UFFD backend only).
struct ForkRequest {
  std::string vm_ref;
  CloneRequest clone;  // name_prefix default: "<vm name>-fork"
  // Name of the snapshot the fork makes; default "<vm name>-fork-<id>".
  std::string snapshot_name;
};

struct ForkResult {
  SnapshotInfo snapshot;  // the layer the forks restore from
  // "diff" (only the pages written since the VM's memory base) or "full"
  // (the VM had no usable memory base: its whole memory).
  std::string kind;
  absl::Duration source_pause;  // the source paused -> resumed
  uint64_t written_bytes = 0;   // memory the snapshot wrote (its allocated bytes)
  CloneResult forks;
  absl::Duration total;
};

struct DeleteSnapshotResult {
  std::string id;
  std::vector<std::string> stopped_vm_ids;
};

}  // namespace fcvm::vm
